"""The rooms of a service, read from its source: where its SQL is and which room modules it has.

`sql_outside_store(package)` reports every string literal (f-strings too, read from their start) of
a package that starts like an SQL statement, outside its ``store`` room (``store.py`` or a
``store/`` package) and its migrations, as ``"path:line: statement"``. `has_room(package, name)`
says whether ``name`` is a module or a package of it; `rooms_section(readme)` reads the lines of a
README's ``## Rooms`` section by the room they name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from pathlib import Path

#: The rooms every service has, or explains the absence of in its README.
ROOMS = ("domain", "handlers", "store", "api", "consumers", "app")

_SQL = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s|LOCK\s+TABLE\s"
    r"|CREATE\s+TABLE\s|DROP\s+TABLE\s)",
    re.IGNORECASE,
)
_ROOM_LINE = re.compile(r"^\s*[-*]\s+`([a-z_]+)(?:\.py|/)?`\s*(.*)$")


def _in_store(relative: Path) -> bool:
    return relative.parts[0] in {"store.py", "store"} or "migrations" in relative.parts


def sql_outside_store(package: Path, skip: Collection[str] = ()) -> list[str]:
    """Each SQL literal of ``package`` outside its store room, as ``"file:line: statement"``.

    ``skip`` names modules (paths relative to the package, ``"writes.py"``) not to read.
    """
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if _in_store(relative) or relative.as_posix() in skip:
            continue
        problems.extend(f"{relative.as_posix()}:{line}: {text}" for line, text in sql_literals(path))
    return problems


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """The line and first 60 characters of each string literal of ``path`` that starts like SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values:
            node = node.values[0]
        elif id(node) in parts:
            continue  # read with its f-string, from its start
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value):
            found.append((node.lineno, node.value.strip()[:60]))
    return sorted(found)


def has_room(package: Path, room: str) -> bool:
    """Whether ``room`` is a module (``room.py``) or a package (``room/__init__.py``) of ``package``."""
    return (package / f"{room}.py").is_file() or (package / room / "__init__.py").is_file()


def rooms_section(readme: Path) -> dict[str, str]:
    """The lines of the README's ``## Rooms`` section, ``- `room`: what it holds or why it is empty``,
    by room name (the text after the name, stripped of a leading colon or dash)."""
    if not readme.is_file():
        return {}
    lines: dict[str, str] = {}
    inside = False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip().lower() == "## rooms"
            continue
        match = _ROOM_LINE.match(line) if inside else None
        if match:
            lines[match.group(1)] = match.group(2).lstrip(":—–- ").strip()
    return lines


def missing_rooms(package: Path, readme: Path) -> set[str]:
    """The rooms ``package`` neither has nor explains (a line with a reason) in ``readme``'s Rooms."""
    explained = rooms_section(readme)
    return {room for room in ROOMS if not has_room(package, room) and not explained.get(room)}

"""Every service has the same rooms (docs/contracts.md, "Rooms of a service"): ``domain`` (pure),
``handlers``, ``store`` (the only SQL), ``api``, ``consumers`` and ``app``, each a module or a
package, and where a room is empty for a good reason the service README's ``## Rooms`` section
names it and says why. A newcomer looking for a service's SQL finds it in its store room.

The two allow-lists below are today's exceptions. They can only shrink: the test also fails when an
entry is no longer true (a module that has no SQL left, a room that now exists or is explained).
The purity of ``domain`` is `tests/test_boundaries.py`'s.
"""

from __future__ import annotations

from pathlib import Path

from calmesh_testing.rooms import ROOMS, has_room, missing_rooms, rooms_section, sql_outside_store

ROOT = Path(__file__).resolve().parents[1]

#: Modules whose SQL has not moved into their service's store room yet, by service.
NOT_YET: dict[str, set[str]] = {
    "sync": {"reservations.py", "writes.py"},
}

#: Rooms a service neither has nor explains in its README yet, by service.
ROOMS_NOT_YET: dict[str, set[str]] = {
    "sync": {"api", "consumers", "domain", "handlers"},
}


def services() -> dict[str, Path]:
    """Each service's package (``services/<name>/src/calmesh_<name>``), by service name."""
    found = {}
    for package in sorted((ROOT / "services").glob("*/src/calmesh_*")):
        if package.is_dir() and (package / "__init__.py").is_file():
            found[package.parents[1].name] = package
    return found


def test_every_service_is_seen() -> None:
    assert {"availability", "billing", "booking", "connections", "gateway", "sync", "webhooks"} <= set(services())
    assert set(NOT_YET) <= set(services()) and set(ROOMS_NOT_YET) <= set(services())


def test_sql_lives_in_each_service_store_room() -> None:
    problems = []
    for name, package in services().items():
        problems.extend(f"services/{name}/src/{package.name}/{p}" for p in sql_outside_store(package, NOT_YET.get(name, ())))
    assert not problems, "SQL outside the service's store room:\n" + "\n".join(problems)


def test_not_yet_names_only_modules_that_still_hold_sql() -> None:
    stale = []
    for name, modules in NOT_YET.items():
        package = services()[name]
        with_sql = {p.split(":", 1)[0] for p in sql_outside_store(package)}
        stale.extend(f"{name}: {module}" for module in sorted(modules - with_sql))
    assert not stale, "NOT_YET entries without SQL any more (remove them):\n" + "\n".join(stale)


def test_every_service_has_its_rooms_or_says_why_not() -> None:
    problems = []
    for name, package in services().items():
        missing = missing_rooms(package, package.parents[1] / "README.md") - ROOMS_NOT_YET.get(name, set())
        problems.extend(f"services/{name}: no `{room}` room and no reason in its README's ## Rooms" for room in sorted(missing))
    assert not problems, "\n".join(problems)


def test_rooms_not_yet_names_only_rooms_still_missing() -> None:
    stale = []
    for name, rooms in ROOMS_NOT_YET.items():
        package = services()[name]
        missing = missing_rooms(package, package.parents[1] / "README.md")
        stale.extend(f"{name}: {room}" for room in sorted(rooms - missing))
    assert not stale, "ROOMS_NOT_YET entries no longer missing (remove them):\n" + "\n".join(stale)


def test_the_detector_names_file_and_line_and_skips_the_store_room(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "__init__.py").write_text('Q = "SELECT 1 FROM x.y"\n', encoding="utf-8")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "run.py").write_text('Q = "CREATE TABLE x.y (id int)"\n', encoding="utf-8")
    (tmp_path / "api.py").write_text(
        '"""DELETE /v1/things is a route, not SQL."""\n'
        "async def f(conn, t):\n"
        '    await conn.execute(\n        "DELETE FROM x.y WHERE id = $1", 1)\n'
        '    await conn.fetch(f"SELECT count(*) FROM {t}")\n',
        encoding="utf-8",
    )
    assert sql_outside_store(tmp_path) == ["api.py:4: DELETE FROM x.y WHERE id = $1", "api.py:5: SELECT count(*) FROM"]
    assert sql_outside_store(tmp_path, skip={"api.py"}) == []


def test_a_room_is_a_module_a_package_or_a_reason_in_the_readme(tmp_path: Path) -> None:
    package = tmp_path / "src" / "calmesh_probe"
    (package / "handlers").mkdir(parents=True)
    (package / "handlers" / "__init__.py").write_text("")
    for module in ("domain", "store", "api", "app"):
        (package / f"{module}.py").write_text("")
    readme = tmp_path / "README.md"
    assert has_room(package, "handlers") and not has_room(package, "consumers")
    assert missing_rooms(package, readme) == {"consumers"}
    readme.write_text("# probe\n\n## Rooms\n- `consumers`\n\n## Other\n- `consumers`: not here\n", encoding="utf-8")
    assert missing_rooms(package, readme) == {"consumers"}, "a room named without a reason is not explained"
    readme.write_text("# probe\n\n## Rooms\n- `store.py`: the SQL\n- `consumers`: none, it consumes no events\n")
    assert rooms_section(readme) == {"store": "the SQL", "consumers": "none, it consumes no events"}
    assert missing_rooms(package, readme) == set()
    assert set(ROOMS) == {"domain", "handlers", "store", "api", "consumers", "app"}

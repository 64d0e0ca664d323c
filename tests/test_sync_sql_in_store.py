"""The sync service's SQL lives in one room, ``calmesh_sync/store.py``: a newcomer looking for what
sync reads or writes in its schema finds it there, and the engine, worker, consumers and rebuild
call it. Every string literal (f-strings too) of sync's other modules that starts like an SQL
statement is reported with file and line.

``writes.py`` and ``reservations.py`` (the event-write and reservation routes) still carry their
own statements: they are named here so that no other module can join them unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from calmesh_testing.rooms import sql_outside_store as _sql_outside_store

ROOT = Path(__file__).resolve().parents[1]
SYNC_SRC = ROOT / "services" / "sync" / "src" / "calmesh_sync"

#: Modules whose statements have not moved to the store yet.
NOT_YET = {"writes.py", "reservations.py"}


def sql_outside_store(package: Path) -> list[str]:
    return _sql_outside_store(package, skip=NOT_YET)


def test_sync_sql_is_in_its_store_module() -> None:
    problems = sql_outside_store(SYNC_SRC)
    assert not problems, "SQL outside calmesh_sync/store.py:\n" + "\n".join(problems)


def test_the_walk_names_file_and_line_of_a_statement(tmp_path: Path) -> None:
    (tmp_path / "store.py").write_text('Q = "SELECT 1 FROM sync.x"\n', encoding="utf-8")
    (tmp_path / "engine.py").write_text(
        '"""DELETE /internal/events is a route, not SQL."""\n'
        "async def f(conn, t):\n"
        '    await conn.execute(\n        "DELETE FROM sync.calendar_state WHERE connection_id = $1", 1)\n'
        '    await conn.fetch(f"SELECT count(*) FROM {t}")\n',
        encoding="utf-8",
    )
    assert sql_outside_store(tmp_path) == [
        "engine.py:4: DELETE FROM sync.calendar_state WHERE connection_id = $1",
        "engine.py:5: SELECT count(*) FROM",
    ]

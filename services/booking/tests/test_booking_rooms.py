"""Booking's SQL lives in one room, ``calmesh_booking/store.py``: a newcomer looking for what booking
reads or writes finds it there, and the handlers, the busy cache and the consumers call it. Every
string literal (f-strings too) of booking's other modules, the ``handlers/`` package included, that
starts like an SQL statement fails this test with file and line (the detector is
``calmesh_testing.rooms``, the one tests/test_rooms.py uses for every service)."""

from __future__ import annotations

from pathlib import Path

import calmesh_booking
from calmesh_testing.rooms import sql_outside_store

PACKAGE = Path(calmesh_booking.__file__).parent


def test_booking_sql_is_only_in_its_store_module() -> None:
    problems = sql_outside_store(PACKAGE)
    assert not problems, "SQL outside calmesh_booking/store.py:\n" + "\n".join(problems)


def test_the_walk_reads_the_handler_modules_and_would_name_their_sql(tmp_path: Path) -> None:
    assert {p.name for p in (PACKAGE / "handlers").glob("*.py")} >= {"context.py", "pages.py", "bookings.py", "polls.py"}
    copy = tmp_path / "calmesh_booking"
    (copy / "handlers").mkdir(parents=True)
    (copy / "store.py").write_text((PACKAGE / "store.py").read_text(encoding="utf-8"), encoding="utf-8")
    polls = (PACKAGE / "handlers" / "polls.py").read_text(encoding="utf-8")
    (copy / "handlers" / "polls.py").write_text(
        polls + '\n\nasync def _peek(conn):\n    return await conn.fetch("SELECT id FROM booking.polls")\n', encoding="utf-8"
    )
    line = len(polls.splitlines()) + 4
    assert sql_outside_store(copy) == [f"handlers/polls.py:{line}: SELECT id FROM booking.polls"]

"""List cursors: opaque to clients, exact for the keyset, and a 400 (never a 500) when they are not ours."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
import pytest

from calmesh_common.cursors import AwareDatetime, bad_cursor, decode_cursor, encode_cursor
from calmesh_common.problems import Problem

KEYSET = tuple[AwareDatetime, str]


def test_a_cursor_gives_back_the_exact_position_it_was_made_of() -> None:
    created = datetime(2026, 3, 15, 9, 0, 0, 123456, tzinfo=UTC)
    cursor = encode_cursor(created, "conn_abc")
    assert decode_cursor(cursor, KEYSET) == (created, "conn_abc")
    # Microseconds survive: a keyset on a timestamptz neither skips nor repeats a row.
    assert decode_cursor(cursor, KEYSET)[0].microsecond == 123456
    offset = datetime(2026, 3, 15, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert decode_cursor(encode_cursor(offset, "x"), KEYSET)[0] == offset
    assert decode_cursor(encode_cursor(42), tuple[int]) == (42,)


def test_a_cursor_is_url_safe_text_without_padding() -> None:
    cursor = encode_cursor(datetime(2026, 3, 15, tzinfo=UTC), "wh_ü/?&=")
    assert cursor.isascii() and not set(cursor) & set("+/=?&%")


def test_cursors_written_before_the_kit_still_read() -> None:
    """Booking and the gateway wrote ``[created_at.isoformat(), id]`` the same way: pages in flight
    across a deploy go on."""
    created = datetime(2026, 3, 15, 9, 0, 0, 5, tzinfo=UTC)
    old = base64.urlsafe_b64encode(msgspec.json.encode([created.isoformat(), "key_1"])).rstrip(b"=").decode()
    assert decode_cursor(old, KEYSET) == (created, "key_1")


Seq = Annotated[int, msgspec.Meta(ge=0)]


@pytest.mark.parametrize(("cursor", "shape"), [
    ("garbage!", KEYSET),
    ("%%%", KEYSET),
    ("", KEYSET),
    ("bm90IGEgY3Vyc29y", KEYSET),  # base64 of prose
    (encode_cursor("yesterday", "x"), KEYSET),
    (encode_cursor("2026-03-15T09:00:00", "x"), KEYSET),  # no offset: not one we wrote
    (encode_cursor(datetime(2026, 3, 15, tzinfo=UTC)), KEYSET),
    (encode_cursor(datetime(2026, 3, 15, tzinfo=UTC), "x", "y"), KEYSET),
    (encode_cursor(-1), tuple[Seq]),
    (encode_cursor(True), tuple[Seq]),
    (encode_cursor("7"), tuple[Seq]),
])
def test_what_is_not_our_cursor_is_a_400_naming_the_parameter(cursor: str, shape: Any) -> None:
    with pytest.raises(Problem) as caught:
        decode_cursor(cursor, shape)
    problem = caught.value
    assert (problem.status, problem.code) == (400, "invalid_cursor")
    assert [e.field for e in problem.errors or []] == ["cursor"]


def test_a_service_keeps_the_code_its_api_documents() -> None:
    with pytest.raises(Problem) as caught:
        decode_cursor("garbage!", KEYSET, code="validation_error")
    assert (caught.value.status, caught.value.code) == (400, "validation_error")
    other = bad_cursor(detail="belongs to a query with other parameters")
    assert other.detail == "cursor: belongs to a query with other parameters."

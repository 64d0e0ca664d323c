"""booking.created evolves by adding fields with defaults: an event written before booking questions
(no `answers`) still decodes, and the answers a new one carries come back as they went in."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from calmesh_common.events import Envelope, decode_event
from calmesh_common.events.booking import BookingCreated

OLD = (b'{"type":"booking.created.v1","booking_id":"bk_1","page_id":"bp_1","page_slug":"intro","user_id":"usr_1",'
       b'"calendar_slug":"work","title":"Intro","start":"2026-03-02T09:00:00Z","end":"2026-03-02T09:30:00Z",'
       b'"name":"Vic","email":"vic@example.org","notes":"","timezone":"UTC","status":"confirmed"}')


def envelope(raw: bytes) -> Envelope:
    return Envelope(id="e1", stream_id="bk_1", version=1, occurred_at=datetime.now(UTC), type="booking.created.v1",
                    event=msgspec.Raw(raw))


def test_a_booking_created_event_from_before_questions_decodes_with_no_answers() -> None:
    event = decode_event(envelope(OLD))
    assert isinstance(event, BookingCreated) and event.answers == {} and event.name == "Vic"


def test_answers_survive_the_round_trip() -> None:
    old = decode_event(envelope(OLD))
    assert isinstance(old, BookingCreated)
    new = msgspec.structs.replace(old, answers={"company": "Acme", "consent": True})
    again = decode_event(envelope(msgspec.json.encode(new)))
    assert isinstance(again, BookingCreated) and again.answers == {"company": "Acme", "consent": True}

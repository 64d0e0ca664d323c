"""Usage counters kept from the events of the contexts that own the resources.

One table, like the webhook mapping: event tag -> (counter, id field, +1/-1). Counted now:
connections (connections context) and booking pages (booking context). API requests a day are not
counted here: the gateway meters them (no event carries them).
"""

from __future__ import annotations

import asyncpg

from calmesh_common.consumer import ConsumerSpec, Handler
from calmesh_common.events import Envelope, decode_event, subject_for
from calmesh_common.streams import stream_name

from . import store

#: event tag -> (context, counter, field naming the item, delta)
USAGE_EVENTS: dict[str, tuple[str, str, str, int]] = {
    "connection.created.v1": ("connections", "connections", "connection_id", +1),
    "connection.removed.v1": ("connections", "connections", "connection_id", -1),
    "booking_page.created.v1": ("booking", "booking_pages", "page_id", +1),
    "booking_page.deleted.v1": ("booking", "booking_pages", "page_id", -1),
}
COUNTERS: tuple[str, ...] = ("connections", "booking_pages")


def usage_consumers(schema: str) -> list[tuple[ConsumerSpec, Handler]]:
    """A durable consumer per context stream, counting into `schema`.usage."""
    by_context: dict[str, list[str]] = {}
    for tag, (context, *_rest) in USAGE_EVENTS.items():
        by_context.setdefault(context, []).append(subject_for(tag, context))

    def handler_for() -> Handler:
        async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
            rule = USAGE_EVENTS.get(envelope.type)
            if rule is None:
                return
            _context, counter, field, delta = rule
            event = decode_event(envelope)
            user_id = getattr(event, "user_id", None) or envelope.user_id
            if user_id:
                await store.count_item(conn, schema, counter, str(getattr(event, field)), user_id, delta)

        return handle

    return [
        (
            ConsumerSpec(name=f"{schema}-usage-{context}", stream=stream_name(context),
                         filter_subjects=tuple(sorted(subjects)), schema=schema),
            handler_for(),
        )
        for context, subjects in sorted(by_context.items())
    ]

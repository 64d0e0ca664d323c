"""The event envelope and the versioned event schemas that cross service boundaries.

Events are frozen msgspec structs tagged with their type and version (``"api_key.revoked.v1"``),
named in the past tense. They evolve by adding fields with defaults; a breaking change is a new
version with an upcaster registered in ``UPCASTERS``. One decoder for the whole union is built once.

On the wire an event travels inside an :class:`Envelope`; the envelope's ``event`` is kept raw so a
consumer decodes only what it handles, and an event type it does not know is not an error for it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every domain event. Subclasses set ``tag="<name>.v<N>"`` and a ``context``.

    Subclasses repeat ``frozen=True``: msgspec inherits it, but a type checker reads it per class.
    """

    #: The bounded context that owns the event; it names the stream and the subject.
    context: ClassVar[str] = ""

    @classmethod
    def type_name(cls) -> str:
        return str(cls.__struct_config__.tag)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What travels on the bus and sits in the event store: metadata around one event."""

    id: str
    stream_id: str
    version: int
    occurred_at: datetime
    type: str
    user_id: str | None = None
    event: msgspec.Raw = msgspec.Raw(b"{}")
    trace: dict[str, str] = msgspec.field(default_factory=dict)


def all_event_types() -> dict[str, type[Event]]:
    """Every concrete event struct by its tag, found by walking the subclasses of Event."""
    _load_contexts()
    found: dict[str, type[Event]] = {}
    stack = list(Event.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        tag = cls.__struct_config__.tag
        if isinstance(tag, str):
            found[tag] = cls
    return found


def _load_contexts() -> None:
    """Import every context's event module so that their structs are registered."""
    from importlib import import_module

    for context in CONTEXT_MODULES:
        import_module(f"{__name__}.{context}")


#: One module per bounded context holds the events that context publishes.
CONTEXT_MODULES = ("gateway", "connections", "sync", "booking", "billing", "webhooks")

#: Upcasters turn the raw dict of an old version into the current one: ``{old_tag: fn}``.
UPCASTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)


@functools.cache
def _union_decoder() -> msgspec.json.Decoder[Event]:
    """One decoder for the union of every event type, built once on first use."""
    union = tuple(all_event_types().values())
    return msgspec.json.Decoder(union[0] if len(union) == 1 else _make_union(union))


def _make_union(types: tuple[type[Event], ...]) -> Any:
    from typing import Union

    return Union[types]  # noqa: UP007 - built at run time from a tuple


def new_event_id() -> str:
    """A fresh, time-ordered event id (UUIDv7 layout: sortable, unique)."""
    ms = int(datetime.now(UTC).timestamp() * 1000)
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def make_envelope(
    event: Event,
    *,
    stream_id: str,
    version: int,
    user_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    trace: dict[str, str] | None = None,
) -> Envelope:
    """Wrap `event` for appending at `version` of `stream_id`."""
    return Envelope(
        id=event_id or new_event_id(),
        stream_id=stream_id,
        version=version,
        occurred_at=occurred_at or datetime.now(UTC),
        type=event.type_name(),
        user_id=user_id,
        event=msgspec.Raw(_encoder.encode(event)),
        trace=trace or {},
    )


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    """Decode an envelope; raises msgspec.DecodeError / ValidationError on a malformed one."""
    return _envelope_decoder.decode(data)


def decode_event(envelope: Envelope) -> Event:
    """Decode the event inside `envelope`, upcasting an older version first."""
    upcast = UPCASTERS.get(envelope.type)
    if upcast is not None:
        raw = msgspec.json.decode(bytes(envelope.event))
        return _union_decoder().decode(_encoder.encode(upcast(raw)))
    return _union_decoder().decode(bytes(envelope.event))


def subject_for(event_type: str, context: str) -> str:
    """The JetStream subject of an event: ``calmesh.<context>.<type without version>``."""
    name = event_type.rsplit(".v", 1)[0]
    return f"calmesh.{context}.{name}"

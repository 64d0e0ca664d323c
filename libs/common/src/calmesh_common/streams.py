"""The JetStream streams of CalMesh, declared in one table and created by `calmesh-migrate`.

Each bounded context publishes its domain events on ``calmesh.<context>.>`` into a stream of its
own; consumers of another context read that stream with durable pull consumers. Poison messages go
to the dead-letter stream with the reason in a header.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from .settings import SERVICE_NAMES

#: The bounded contexts: the gateway's and one a service (each service publishes into its own).
CONTEXTS: tuple[str, ...] = ("gateway", *SERVICE_NAMES)

#: How long JetStream remembers a Nats-Msg-Id to drop a duplicate publish.
DUPLICATE_WINDOW_SECONDS = 15 * 60
DEAD_LETTER_STREAM = "CALMESH_DLQ"
DEAD_LETTER_PREFIX = "calmesh.dlq"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_age_days: float = 365.0


def stream_name(context: str) -> str:
    return f"CALMESH_{context.upper()}"


STREAMS: tuple[StreamSpec, ...] = (
    *(StreamSpec(stream_name(c), (f"calmesh.{c}.>",)) for c in CONTEXTS),
    StreamSpec(DEAD_LETTER_STREAM, (f"{DEAD_LETTER_PREFIX}.>",), max_age_days=30.0),
    # Work queue of sync jobs: each message is taken by exactly one worker, then removed.
    StreamSpec("CALMESH_SYNC_JOBS", ("calmesh.jobs.sync.>",), RetentionPolicy.WORK_QUEUE, 7.0),
)


def _config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=spec.retention,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_days * 86400,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> list[str]:
    """Create or update every stream of STREAMS with `replicas` copies each (on that many servers
    of a JetStream cluster; `CALMESH_STREAM_REPLICAS`); returns their names.

    An update changes the replica count of an existing stream too: JetStream adds (or removes)
    peers and catches them up, so going from R1 to R3 on a new cluster is a re-run of migrate."""
    for spec in STREAMS:
        config = _config(spec, replicas)
        try:
            await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    return [s.name for s in STREAMS]

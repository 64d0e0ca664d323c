"""The dispatcher's rules and signatures, without I/O."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from standardwebhooks import Webhook

from calmesh_common.events import make_envelope
from calmesh_common.events.sync import InstanceKey, InstanceRow, SourceEventsDeleted, SourceEventsUpserted
from calmesh_common.retryafter import parse_retry_after
from calmesh_webhooks.mapping import AWAITING_PRODUCER, EVENT_MAP, PUBLIC_EVENT_TYPES, subjects_by_context
from calmesh_webhooks.domain import classify, retry_delay, url_problem
from calmesh_webhooks.signing import new_secret, secret_key, signature_header

SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


def test_the_retry_schedule_of_api_md_then_nothing() -> None:
    delays = [retry_delay(n, SCHEDULE, jitter=0.0) for n in range(1, 11)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400, None]


def test_jitter_stays_within_its_fraction_and_retry_after_wins_when_longer() -> None:
    rng = random.Random(7)
    spread = {retry_delay(2, SCHEDULE, jitter=0.1, rng=rng) for _ in range(200)}
    assert min(spread) >= 270 and max(spread) <= 330 and len(spread) > 100
    assert retry_delay(1, SCHEDULE, jitter=0.0, retry_after=120) == 120
    assert retry_delay(2, SCHEDULE, jitter=0.0, retry_after=10) == 300
    assert retry_delay(1, SCHEDULE, jitter=0.0, retry_after=10**9, max_retry_after=3600) == 3600


def test_only_2xx_succeeds_410_is_gone_and_429_503_carry_retry_after() -> None:
    assert classify(204).succeeded and not classify(301).succeeded and not classify(None).succeeded
    assert classify(410).gone and not classify(404).gone
    assert classify(429, "30").retry_after == 30 and classify(503, "7").retry_after == 7
    assert classify(500, "30").retry_after is None
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 25 Nov 2026 12:01:00 GMT", now=now) == 60
    assert parse_retry_after("soon", now=now) is None


def test_subscriber_urls_must_be_public_http() -> None:
    assert url_problem("https://hooks.example.com/in", allow_private_networks=False) is None
    for bad in ("ftp://example.com/", "example.com/x", "https://user:pw@example.com/", "http://127.0.0.1/x",
                "http://10.1.2.3/", "http://[::ffff:192.168.0.1]/", "http://169.254.169.254/latest"):
        assert url_problem(bad, allow_private_networks=False), bad
    assert url_problem("http://127.0.0.1:9/x", allow_private_networks=True) is None


def test_signatures_verify_with_the_reference_library_one_per_secret() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"booking.created","timestamp":"2026-11-25T12:00:00Z","data":{"id":"bk_1"}}'
    ts = int(datetime.now(UTC).timestamp())
    header = signature_header([secret_key(new), secret_key(old)], "evt-1", ts, body)
    headers = {"webhook-id": "evt-1", "webhook-timestamp": str(ts), "webhook-signature": header}
    assert Webhook(new).verify(body, headers)["data"]["id"] == "bk_1"
    assert Webhook(old).verify(body, headers)["data"]["id"] == "bk_1"
    assert len(header.split(" ")) == 2 and all(s.startswith("v1,") for s in header.split(" "))


def test_the_mapping_table_covers_the_public_types_and_names_what_waits() -> None:
    mapped = {t for m in EVENT_MAP.values() for t in m.public_types}
    assert mapped | set(AWAITING_PRODUCER) == set(PUBLIC_EVENT_TYPES)
    assert AWAITING_PRODUCER == ("calendar.conflict.detected",)
    assert "calmesh.billing.plan.changed" in subjects_by_context()["billing"]


def test_a_sync_batch_becomes_one_public_event_per_instance_with_stable_ids() -> None:
    at = datetime(2026, 3, 15, 9, 0, tzinfo=UTC)
    row = InstanceRow(event_id="evt_a", uid="u1", title="Standup", start_at=at, end_at=at, updated_at=at)
    upserted = SourceEventsUpserted(user_id="usr_1", connection_id="conn_1", calendar_id="cal_1",
                                    created=[row], updated=[row])
    env = make_envelope(upserted, stream_id="s", version=1, user_id="usr_1")
    found = EVENT_MAP[env.type].explode(upserted, env)
    assert [(p.id, p.type) for p in found] == [(f"{env.id}.0", "calendar.event.created"),
                                               (f"{env.id}.1", "calendar.event.updated")]
    assert found[0].data["id"] == "evt_a" and found[0].data["start"] == "2026-03-15T09:00:00Z"
    assert EVENT_MAP[env.type].explode(upserted, env) == found  # same ids every time (retries, replay)
    deleted = SourceEventsDeleted(user_id="usr_1", connection_id="conn_1", calendar_id="cal_1",
                                  keys=[InstanceKey("evt_a", "u1")])
    env2 = make_envelope(deleted, stream_id="s", version=2, user_id="usr_1")
    [gone] = EVENT_MAP[env2.type].explode(deleted, env2)
    assert gone.type == "calendar.event.deleted" and gone.data["id"] == "evt_a"


async def test_the_delivery_client_keeps_the_guarded_clients_address_rule() -> None:
    import pytest

    from calmesh_common.guarded import FetchError, GuardedClient
    from calmesh_webhooks.transport import AiohttpGuardedClient

    client = AiohttpGuardedClient(allow_private_networks=False, timeout=2)
    assert isinstance(client, GuardedClient)
    try:
        for url in ("http://127.0.0.1:9/hook", "http://[::ffff:10.0.0.1]/hook", "http://169.254.169.254/latest",
                    "http://localhost:9/hook", "ftp://example.com/hook"):
            with pytest.raises(FetchError):
                await client.fetch(url, method="POST", content=b"{}")
    finally:
        await client.aclose()

"""Webhooks through the gateway with the platform's real producers (the session `stack`): managed
with a full key, a read key refused, a test send at once, and what connections and sync publish when
an iCal feed is connected delivered signed (verified with the reference `standardwebhooks` library).
The dispatcher's own rules, in-process: services/webhooks/tests/test_webhooks_delivery.py."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec

from calmesh_testing.receiver import Receiver, verify
from calmesh_testing.servers import Served

FEED = b"""BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//CalMesh tests//EN\r
BEGIN:VEVENT\r
UID:standup-webhook-e2e@example.com\r
DTSTAMP:20261120T080000Z\r
DTSTART:20261201T090000Z\r
DTEND:20261201T091500Z\r
SUMMARY:Standup\r
END:VEVENT\r
END:VCALENDAR\r
"""


async def test_through_the_gateway_a_synced_feed_reaches_the_subscriber_signed(stack: Any) -> None:
    """Webhooks managed with a full key through the gateway; the stack's own dispatcher delivers
    what connections and sync publish when an iCal feed is connected."""
    receiver = Receiver()
    feed = receiver.on("/feed.ics", (200, {"content-type": "text/calendar"}, FEED))
    hooks = receiver.on("/hooks", 200)
    served = await Served(receiver).start()
    suffix = uuid.uuid4().hex[:10]
    try:
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
            r = await gw.post("/api/v1/auth/signup", json={"email": f"wh-{suffix}@example.com",
                                                           "password": "a long enough passphrase",
                                                           "handle": f"wh-{suffix}", "timezone": "Europe/Amsterdam"})
            assert r.status_code == 201, r.text
            csrf = {"X-CSRF-Token": gw.cookies["calmesh_csrf"]}
            keys = {}
            for scope in ("full", "read"):
                k = await gw.post("/api/v1/api-keys", json={"name": scope, "scope": scope}, headers=csrf)
                assert k.status_code == 201, k.text
                keys[scope] = {"Authorization": f"Bearer {k.json()['key']}"}
            gw.cookies.clear()
            body = {"url": served.url + hooks, "event_types": ["connection.synced", "calendar.event.created"]}
            refused = await gw.post("/api/v1/webhooks", json=body, headers=keys["read"])
            assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
            r = await gw.post("/api/v1/webhooks", json=body, headers=keys["full"])
            assert r.status_code == 201, r.text
            hook = r.json()

            # webhook.test, sent at once
            r = await gw.post(f"/api/v1/webhooks/{hook['id']}/test", headers=keys["full"])
            assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
            assert verify(hook["secret"], receiver.at(hooks)[0])["type"] == "webhook.test"

            # Real producers: connecting the feed makes connections and sync publish events.
            c = await gw.post("/api/v1/connections/ical", json={"url": served.url + feed}, headers=keys["full"])
            assert c.status_code == 201, c.text
            connection_id = c.json()["id"]

            def types() -> list[str]:
                return [msgspec.json.decode(x.body)["type"] for x in receiver.at(hooks)]

            await receiver.wait_for(
                lambda: {"connection.synced", "calendar.event.created"} <= set(types()), timeout=60
            )
            got = {}
            for x in receiver.at(hooks)[1:]:
                parsed = verify(hook["secret"], x)
                got[parsed["type"]] = (x.headers["webhook-id"], parsed["data"])
            assert got["connection.synced"][1]["id"] == connection_id
            created = got["calendar.event.created"][1]
            assert created["title"] == "Standup" and created["start"] == "2026-12-01T09:00:00Z"
            assert created["connection_id"] == connection_id and created["id"].startswith("evt_")

            r = await gw.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=keys["full"])
            assert r.status_code == 200
            listed = {(d["event_type"], d["event_id"]) for d in r.json()["data"]}
            assert {("connection.synced", got["connection.synced"][0]),
                    ("calendar.event.created", got["calendar.event.created"][0])} <= listed
    finally:
        await served.stop()

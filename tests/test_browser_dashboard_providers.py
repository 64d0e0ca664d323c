"""The dashboard's flows that leave CalMesh and come back, in a real browser (Debian's Chromium):
"Connect Google" and "Connect Microsoft" go to the provider's consent screen (the project's OAuth,
Google Calendar and Microsoft Graph fakes) and returns to /app/connections with the connection syncing, then active; "Upgrade to Pro"
goes to Mollie's checkout (the Mollie fake) and, once Mollie reports the payment paid, the billing
page shows the Pro plan; "Cancel subscription" ends it at the period's end.

The platform here is a stack of its own (its own database on the session's PostgreSQL server and
its own NATS), started with the fakes' addresses in its settings, so its outbox relays and work
queues are never shared with the session's `stack`. Screenshots go to
$CALMESH_TEST_ARTIFACTS/dashboard."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from calmesh_booking.testing import Served
from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.migrate import migrate_all
from calmesh_common.devstack.supervisor import Stack

sys.path.insert(0, str(Path(__file__).parent))
from fakes.google import GoogleFake  # noqa: E402
from fakes.graph import GraphFake  # noqa: E402
from fakes.mollie import FakeMollie  # noqa: E402
from fakes.oauth import OAuthFake  # noqa: E402
from fakes.platform import create_database, private_nats  # noqa: E402
from fakes.dashboard import shot, sign_up  # noqa: E402

pytestmark = pytest.mark.timeout(480)


@dataclass
class World:
    stack: Stack
    oauth: OAuthFake
    google: GoogleFake
    graph: GraphFake
    mollie: FakeMollie
    urls: dict[str, str]


@pytest.fixture(scope="module")
async def world(database_url: str) -> AsyncIterator[World]:
    oauth, mollie = OAuthFake(), FakeMollie()
    google, graph = GoogleFake(oauth), GraphFake(oauth)
    servers = {"oauth": Served(oauth.app()), "google": Served(google.app()), "graph": Served(graph.app()),
               "mollie": Served(mollie)}
    for server in servers.values():
        await server.start()
    urls = {name: server.url for name, server in servers.items()}
    mollie.base_url, graph.base_url = urls["mollie"], urls["graph"]
    database = await create_database(database_url, f"dash_{uuid.uuid4().hex[:10]}")
    try:
        with private_nats() as nats_url, tempfile.TemporaryDirectory(prefix="calmesh-test-dash-") as tmp:
            await migrate_all(database, nats_url)
            stack = Stack(
                data_dir=Path(tmp), http_port=free_port(), sync_workers=1, database_url=database, nats_url=nats_url,
                fixed_ports=False, quiet=os.environ.get("CALMESH_TEST_STACK_LOGS") != "1", restart=False,
                extra_env={
                    "CALMESH_LOG_LEVEL": "warning", "CALMESH_DB_POOL_MAX": "4", "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
                    "CALMESH_GOOGLE_CLIENT_ID": oauth.client_id, "CALMESH_GOOGLE_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_GOOGLE_AUTH_URL": f"{urls['oauth']}/authorize",
                    "CALMESH_GOOGLE_TOKEN_URL": f"{urls['oauth']}/token",
                    "CALMESH_GOOGLE_REVOKE_URL": f"{urls['oauth']}/revoke", "CALMESH_GOOGLE_API_URL": urls["google"],
                    "CALMESH_MICROSOFT_CLIENT_ID": oauth.client_id,
                    "CALMESH_MICROSOFT_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_MICROSOFT_AUTH_URL": f"{urls['oauth']}/authorize",
                    "CALMESH_MICROSOFT_TOKEN_URL": f"{urls['oauth']}/token", "CALMESH_MICROSOFT_GRAPH_URL": urls["graph"],
                    "CALMESH_PUSH_NOTIFICATIONS": "off",
                    "CALMESH_MOLLIE_API_BASE": urls["mollie"], "CALMESH_MOLLIE_API_KEY": mollie.api_key,
                },
            )
            try:
                await asyncio.to_thread(stack.start, 240)  # a shared, busy machine starts slowly
                yield World(stack, oauth, google, graph, mollie, urls)
            finally:
                await asyncio.to_thread(stack.stop)
    finally:
        for server in servers.values():
            await server.stop()


async def test_connect_google_goes_to_the_consent_screen_and_back_to_a_syncing_connection(
        world: World, browser: Browser) -> None:
    base = world.stack.gateway_url
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    world.google.calendar("grace@example.com", "Grace", primary=True)
    world.google.add("grace@example.com", "Board meeting", now + timedelta(days=1), now + timedelta(days=1, hours=1))
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    visited: list[str] = []
    page.on("request", lambda request: visited.append(request.url) if request.is_navigation_request() else None)
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_up(page, base)

    await page.get_by_role("button", name="Connect Google").click()
    await page.wait_for_url(f"{base}/app/connections?*")
    assert any(u.startswith(f"{world.urls['oauth']}/authorize?") for u in visited), visited
    assert "status=connected" in page.url, page.url
    await expect(page.get_by_role("status")).to_contain_text("Calendar connected")
    row = page.get_by_role("row").filter(has_text="grace@example.com")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("google")
    deadline = time.monotonic() + 60
    while not await row.filter(has_text="active").count():
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(row).to_contain_text("Grace")
    await shot(page, "p1-google-connected")

    # A consent the user refuses comes back too, and adds no working connection.
    world.oauth.deny_next = True
    await page.get_by_role("button", name="Connect Google").click()
    await page.wait_for_url(re.compile(r"/app/connections\?.*status=error"))
    await expect(page.get_by_role("status")).to_contain_text("could not be connected")
    await shot(page, "p1b-google-refused")
    await expect(page.get_by_role("row").filter(has_text="grace@example.com").filter(has_text="active")).to_have_count(1)
    await context.close()


async def test_connect_microsoft_goes_to_the_consent_screen_and_back(world: World, browser: Browser) -> None:
    base = world.stack.gateway_url
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    world.graph.calendar("cal-main", "Calendar")
    world.graph.add("cal-main", "Quarterly review", now + timedelta(days=2), now + timedelta(days=2, hours=1))
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    await sign_up(page, base)
    await page.get_by_role("button", name="Connect Microsoft").click()
    await page.wait_for_url(re.compile(r"/app/connections\?.*status=connected"))
    row = page.get_by_role("row").filter(has_text="microsoft")
    await expect(row).to_have_count(1)
    deadline = time.monotonic() + 60
    while not await row.filter(has_text="active").count():
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(row).to_contain_text(world.graph.mail)
    await shot(page, "p1c-microsoft-connected")
    await context.close()


async def test_upgrade_goes_to_the_mollie_checkout_and_cancel_ends_the_subscription(
        world: World, browser: Browser) -> None:
    base = world.stack.gateway_url
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_up(page, base)
    await page.get_by_role("link", name="Billing").click()
    await expect(page.locator(".plan")).to_have_text("free")
    await expect(page.locator(".usage")).to_contain_text("0 of 3")
    await shot(page, "p2-billing-free")

    await page.get_by_role("button", name="Upgrade to Pro").click()
    await page.wait_for_url(f"{world.urls['mollie']}/checkout/**")
    payment_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert payment_id in world.mollie.payments, page.url
    assert world.mollie.payments[payment_id]["redirectUrl"] == f"{base}/app/billing"
    # The customer pays; Mollie tells CalMesh (through the gateway) and sends the browser back.
    assert await world.mollie.complete_checkout(payment_id) < 300
    await page.goto(world.mollie.payments[payment_id]["redirectUrl"])
    deadline = time.monotonic() + 30
    while (await page.locator(".plan").text_content() or "").strip() != "pro":
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(page.locator(".usage")).to_contain_text("0 of 50")
    await expect(page.get_by_role("button", name="Upgrade to Pro")).to_have_count(0)
    await shot(page, "p3-billing-pro")

    await page.get_by_role("button", name="Cancel subscription").click()
    deadline = time.monotonic() + 30
    while await page.get_by_role("button", name="Cancel subscription").count():
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(page.locator(".facts")).to_contain_text("canceled")
    await shot(page, "p4-billing-canceled")
    await context.close()

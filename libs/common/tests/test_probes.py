"""Probes for orchestrators and metrics of every service built with the service kit.

- ``/livez``: the process answers, nothing else is asked (a slow database never gets a pod killed);
- ``/readyz``: the database, NATS, and every consumer and background loop still running; a replica
  whose consumer died says so and is taken out of its Service;
- ``/metrics``: the Prometheus text format, requests by route template, the consumers' backlog and
  the outbox's lag; all three answer without the internal secret (the kubelet and Prometheus do
  not have it);
- the standard library's loggers (uvicorn, asyncpg, nats) write the same JSON lines as structlog.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
import pytest
import structlog
import uvicorn
from litestar import get

from calmesh_common.consumer import ConsumerSpec
from calmesh_common.devstack.embedded import free_port
from calmesh_common.logging import setup_logging
from calmesh_common.service import SECRET_HEADER, create_service_app
from calmesh_common.settings import Settings

SECRET = "probe-s3cret"


@get("/things/{name:str}")
async def read_thing(name: str) -> dict[str, str]:
    return {"name": name}


async def ignore(conn, envelope) -> None:  # type: ignore[no-untyped-def]
    return None


@pytest.fixture
async def served(database_url, nats_server_url, lane, unique):
    settings = Settings.from_env({}, database_url=database_url, nats_url=nats_server_url, internal_secret=SECRET,
                                 service_name="libtest")
    spec = ConsumerSpec(name=f"libtest_probe_{unique}", stream=lane.stream,
                        filter_subjects=(f"calmesh.{lane.context}.>",), schema=lane.schema)
    app = create_service_app(settings, name=lane.context, schema=lane.schema, route_handlers=[read_thing],
                             consumers=[(spec, ignore)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the service did not start"
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield app, client, spec
    server.should_exit = True
    await asyncio.wait({task}, timeout=10)


async def test_liveness_and_readiness_answer_without_the_secret(served) -> None:
    app, client, _ = served
    live = await client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "nats": "ok", "consumers": "ok"}


async def test_a_replica_whose_consumer_stopped_is_not_ready_but_still_alive(served) -> None:
    app, client, spec = served
    deps = app.state.deps
    [consumer_task] = [t for t in deps.tasks if t.get_name().endswith(spec.name)]
    consumer_task.cancel()
    await asyncio.wait({consumer_task}, timeout=5)
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["consumers"] == f"down: {consumer_task.get_name()} stopped"
    # Liveness does not depend on it: restarting the pod is the orchestrator's call on readiness.
    assert (await client.get("/livez")).status_code == 200


async def test_metrics_count_requests_by_route_template_and_sample_backlogs(served, lane) -> None:
    _, client, spec = served
    for name in ("a", "b", "c"):
        assert (await client.get(f"/things/{name}", headers={SECRET_HEADER: SECRET})).status_code == 200
    assert (await client.get("/things/a")).status_code == 401  # without the secret: counted too

    async def scrape() -> str:
        r = await client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return r.text

    text = await scrape()
    route = "/things/{name}"
    ok = f'calmesh_http_requests_total{{method="GET",route="{route}",service="{lane.context}",status="200"}} 3.0'
    assert ok in text, text
    assert f'route="{route}",service="{lane.context}",status="401"}} 1.0' in text
    assert f'calmesh_http_request_duration_seconds_count{{method="GET",route="{route}",service="{lane.context}"}} 4.0' in text
    assert "_created" not in text
    for _ in range(100):  # the sampler's first round runs at start-up
        if f'consumer="{spec.name}"' in text:
            break
        await asyncio.sleep(0.05)
        text = await scrape()
    assert f'calmesh_consumer_pending_messages{{consumer="{spec.name}",service="{lane.context}",stream="{lane.stream}"}} 0.0' in text
    assert f'calmesh_outbox_oldest_unpublished_age_seconds{{schema="{lane.schema}",service="{lane.context}"}}' in text


def test_standard_library_loggers_write_the_same_json_lines() -> None:
    buffer = io.StringIO()
    setup_logging("booking", "info", json=True, stream=buffer)
    try:
        structlog.contextvars.bind_contextvars(request_id="req-7")
        # (nats-py's own error lines are folded into one outage line: see test_logging)
        logging.getLogger("asyncio").error("Unclosed client session %s", "client_session")
        logging.getLogger("asyncpg.pool").info("chatter below the libraries' level")
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
        lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        logging.getLogger().handlers.clear()
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("asyncio", "error", "Unclosed client session client_session"),
        ("uvicorn.error", "warning", "Invalid HTTP request received."),
    ]
    assert all(line["service"] == "booking" and line["request_id"] == "req-7" and line["timestamp"] for line in lines)

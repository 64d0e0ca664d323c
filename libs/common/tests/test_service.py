"""The service kit: internal trust, problem+json for every error, request ids, and one trace from
an HTTP request through the outbox and JetStream into a consumer."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import uvicorn
from litestar import get, post

from calmesh_common.consumer import ConsumerSpec
from calmesh_common.devstack.embedded import free_port
from calmesh_common.events import Envelope
from calmesh_common.logging import get_logger
from calmesh_common.service import SECRET_HEADER, Caller, ServiceDeps, create_service_app
from calmesh_common.settings import Settings
from calmesh_common.tracing import current_trace_id, setup_tracing

from .conftest import ThingRecorded

SECRET = "internal-s3cret"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class ThingCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    count: int


@post("/things")
async def create_thing(data: ThingCreate, deps: ServiceDeps, caller: Caller) -> dict[str, Any]:
    assert deps.pool is not None
    async with deps.pool.acquire() as conn, conn.transaction():
        [envelope] = await deps.store.append(conn, f"thing-{data.name}", 0, [ThingRecorded(n=data.count)], user_id=caller.user_id)
    return {"id": envelope.id, "trace": envelope.trace, "user_id": caller.user_id, "scope": caller.scope}


@get("/boom")
async def boom() -> None:
    raise RuntimeError("connection to postgresql://calmesh:hunter2@db failed")


@get("/log")
async def log_something() -> dict[str, str]:
    get_logger("libtest").info("thing_logged", password="hunter2", headers={"Authorization": "Bearer abc"})
    return {"ok": "yes"}


class Seen:
    """What the consumer behind the app saw: the trace it ran in, per event."""

    def __init__(self) -> None:
        self.traces: dict[str, str | None] = {}
        self.arrived = asyncio.Event()

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        self.traces[envelope.id] = current_trace_id()
        self.arrived.set()


@dataclass
class Service:
    """The running service: an HTTP client on it, and what its consumer saw."""

    client: httpx.AsyncClient
    seen: Seen

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    # What run_service does in every process: without a tracer provider there are no spans.
    setup_tracing("libtest")


@pytest.fixture
async def service(database_url, nats_server_url, lane, unique):
    """A service built with create_service_app, served by uvicorn on a free port."""
    settings = Settings.from_env(
        {}, database_url=database_url, nats_url=nats_server_url, internal_secret=SECRET, service_name="libtest"
    )
    seen = Seen()
    spec = ConsumerSpec(
        name=f"libtest_{unique}", stream=lane.stream, filter_subjects=(f"calmesh.{lane.context}.>",), schema=lane.schema
    )
    app = create_service_app(
        settings,
        name=lane.context,
        schema=lane.schema,
        route_handlers=[create_thing, boom, log_something],
        consumers=[(spec, seen)],
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the service did not start"
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield Service(client, seen)
    server.should_exit = True
    await asyncio.wait({task}, timeout=10)
    assert task.done(), "the service did not shut down"


INTERNAL = {SECRET_HEADER: SECRET, "x-calmesh-user-id": "usr_1", "x-calmesh-auth": "key", "x-calmesh-scope": "write"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    return body


async def test_requests_without_the_internal_secret_are_refused(service) -> None:
    without = {k: v for k, v in INTERNAL.items() if k != SECRET_HEADER}
    assert_problem(await service.post("/things", json={"name": "a", "count": 1}, headers=without), 401, "unauthorized")
    wrong = {**INTERNAL, SECRET_HEADER: SECRET + "x"}
    assert_problem(await service.post("/things", json={"name": "a", "count": 1}, headers=wrong), 401, "unauthorized")
    # The health check answers anyone, and checks the database and NATS.
    health = await service.get("/health")
    assert health.status_code == 200
    assert health.json()["checks"] == {"database": "ok", "nats": "ok"}


async def test_a_request_without_a_caller_is_refused_by_the_caller_dependency(service) -> None:
    only_secret = {SECRET_HEADER: SECRET}
    assert_problem(await service.post("/things", json={"name": "a", "count": 1}, headers=only_secret), 401, "unauthorized")


async def test_the_caller_arrives_from_the_gateways_headers(service) -> None:
    r = await service.post("/things", json={"name": "a", "count": 1}, headers=INTERNAL)
    assert r.status_code == 201, r.text
    assert (r.json()["user_id"], r.json()["scope"]) == ("usr_1", "write")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b'{"name": "a", "count": ', "body", "truncated"),
        (b'{"name": "a", "count": "three"}', "count", "Expected `int`, got `str`"),
        (b'{"name": "a", "count": 3, "colour": "red"}', "colour", "unknown field `colour`"),
        (b'{"name": "a"}', "count", "missing required field `count`"),
    ],
)
async def test_a_bad_body_is_a_400_problem_naming_the_field(service, body: bytes, field: str, message: str) -> None:
    r = await service.post("/things", content=body, headers={**INTERNAL, "content-type": "application/json"})
    problem = assert_problem(r, 400, r.json().get("code", "?"))
    assert problem["code"] in ("validation_error", "bad_request")
    [error] = problem["errors"]
    assert error["field"] == field
    assert message in error["message"]


async def test_an_unknown_route_is_a_404_problem(service) -> None:
    assert_problem(await service.get("/no/such/thing", headers=INTERNAL), 404, "not_found")


async def test_an_unhandled_exception_is_an_opaque_500_problem(service) -> None:
    r = await service.get("/boom", headers=INTERNAL)
    body = assert_problem(r, 500, "internal_error")
    assert "hunter2" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    assert set(body) == {"type", "title", "status", "detail", "code"}


async def test_the_request_id_is_echoed_or_made(service) -> None:
    r = await service.get("/log", headers={**INTERNAL, "x-request-id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    r = await service.get("/log", headers=INTERNAL)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # Problems carry it too, so that a client can quote it.
    assert (await service.get("/boom", headers={**INTERNAL, "x-request-id": "req-43"})).headers["x-request-id"] == "req-43"


async def test_responses_carry_a_traceparent_continuing_the_callers_trace(service) -> None:
    r = await service.get("/log", headers={**INTERNAL, "traceparent": TRACEPARENT})
    version, trace_id, span_id, flags = r.headers["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert span_id != "00f067aa0ba902b7"  # the service's own span, child of the caller's
    fresh = (await service.get("/log", headers=INTERNAL)).headers["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fresh) and TRACE_ID not in fresh


async def test_one_trace_runs_from_the_request_through_the_outbox_into_the_consumer(service, js, lane, read_stream) -> None:
    r = await service.post("/things", json={"name": "t", "count": 5}, headers={**INTERNAL, "traceparent": TRACEPARENT})
    assert r.status_code == 201, r.text
    event_id = r.json()["id"]
    assert TRACE_ID in r.json()["trace"]["traceparent"]  # Envelope.trace

    await asyncio.wait_for(service.seen.arrived.wait(), 10)
    [stored] = await read_stream(lane.stream)
    assert stored.msg_id == event_id
    assert TRACE_ID in stored.headers["traceparent"]  # NATS headers
    assert service.seen.traces == {event_id: TRACE_ID}  # the consumer's span


async def test_log_lines_are_json_with_request_and_trace_ids_and_no_secrets(service, json_logs) -> None:
    r = await service.get("/log", headers={**INTERNAL, "x-request-id": "req-77", "traceparent": TRACEPARENT})
    assert r.status_code == 200
    [line] = [line for line in json_logs() if line["event"] == "thing_logged"]
    assert line["request_id"] == "req-77"
    assert line["trace_id"] == TRACE_ID
    assert line["password"] == "[redacted]"
    assert line["headers"] == {"Authorization": "[redacted]"}

"""What an ops team plugs in: traces over OTLP, metrics at /metrics, probes for the orchestrator.

A real service process (availability, as `calmesh-availability` runs in its pod) is started with
the standard OTEL_* variables pointing at an in-process OTLP/HTTP collector on loopback, and with
a metrics port of its own. Its call to connections' internal API goes to a fake connections
server that records the headers it receives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from calmesh_common.devstack.embedded import free_port

SECRET = "observability-secret"
TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4731"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, object]


@dataclass
class Collector:
    """An OTLP/HTTP (protobuf) trace receiver, and a fake connections service, on one port."""

    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    internal_calls: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def traced(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(any_value: object) -> object:
    kind = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    state = Collector(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with state.lock:
                state.content_types.append(self.headers.get("content-type", ""))
                for resource_spans in request.resource_spans:
                    attrs = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            state.spans.append(ReceivedSpan(
                                service=str(attrs.get("service.name")), name=span.name, trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            ))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 - the fake connections service
            with state.lock:
                state.internal_calls.append({k.lower(): v for k, v in self.headers.items()})
            body = b'{"status":404,"code":"calendar_not_found","detail":"no such calendar"}'
            self.send_response(404)
            self.send_header("content-type", "application/problem+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Running:
    url: str
    metrics_url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def availability(migrated: str, nats_server_url: str, collector: Collector, tmp_path_factory) -> Iterator[Running]:
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("observability") / "availability.log"
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "NATS_URL": nats_server_url,
        "CALMESH_SERVICE": "availability",
        "CALMESH_PORT": str(port),
        "CALMESH_INTERNAL_SECRET": SECRET,
        "CALMESH_CONNECTIONS_URL": collector.url,
        "CALMESH_SYNC_URL": collector.url,
        "CALMESH_METRICS_PORT": str(metrics_port),
        "CALMESH_DB_POOL_MAX": "3",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    env.pop("OTEL_SDK_DISABLED", None)
    with open(log, "wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).parent / "calmesh-availability")], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    running = Running(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", process)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"availability exited: {log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"availability not ready: {log.read_text()[-2000:]}"
        time.sleep(0.1)
    running.log = log  # type: ignore[attr-defined]
    yield running
    process.terminate()
    process.wait(15)


def wait_for(check, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


def caller_headers(traceparent: str = TRACEPARENT) -> dict[str, str]:
    return {"x-calmesh-internal-secret": SECRET, "x-calmesh-user-id": "usr_obs", "x-calmesh-scope": "read",
            "x-calmesh-auth": "key", "traceparent": traceparent}


def test_spans_are_exported_over_otlp_and_internal_calls_carry_the_trace(availability: Running, collector: Collector) -> None:
    r = httpx.get(f"{availability.url}/api/v1/calendars/work/events",
                  params={"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}, headers=caller_headers())
    assert r.status_code == 404, r.text
    assert r.headers["traceparent"].split("-")[1] == TRACE_ID

    def spans() -> list[ReceivedSpan] | None:
        found = collector.traced(TRACE_ID)
        names = {s.name for s in found}
        server = any(s.name == "availability GET /api/v1/calendars/{slug}/events" for s in found)
        client = any(s.kind == 3 for s in found)  # SPAN_KIND_CLIENT: the httpx call to connections
        return found if server and client and names else None

    try:
        found = wait_for(spans, what="the request's server span and its client span at the collector")
    except AssertionError:
        print("spans received:", [(s.name, s.kind, s.trace_id) for s in collector.spans][:30])
        raise
    assert {s.service for s in found} == {"calmesh-availability"}
    assert all(ct == "application/x-protobuf" for ct in collector.content_types)
    server = next(s for s in found if s.name.startswith("availability GET"))
    assert server.parent_span_id == "00f067aa0ba902b7", "the server span continues the caller's span"
    # The call to connections' internal API carried the same trace, so its spans join it.
    [call] = [c for c in collector.internal_calls if c.get("traceparent", "").split("-")[1:2] == [TRACE_ID]]
    client = next(s for s in found if s.kind == 3)
    assert call["traceparent"].split("-")[2] == client.span_id
    assert client.parent_span_id == server.span_id


def test_database_queries_are_spans_of_the_request(availability: Running, collector: Collector) -> None:
    trace_id = "6cf92f3577b34da6a3ce929d0e0e4732"
    r = httpx.get(f"{availability.url}/readyz", headers={"traceparent": f"00-{trace_id}-10f067aa0ba902b7-01"})
    assert r.status_code == 200 and r.json()["checks"]["consumers"] == "ok"
    found = wait_for(lambda: [s for s in collector.traced(trace_id) if s.attributes.get("db.system") == "postgresql"]
                     or None, what="an asyncpg span")
    assert any("SELECT 1" in str(s.attributes.get("db.statement", "")) for s in found)
    # Background queries outside any request (the relay's poll, the metrics sampler) start no
    # trace of their own: every database span the collector got belongs to a traced request.
    time.sleep(1.5)
    with collector.lock:
        roots = [s for s in collector.spans if s.kind == 3 and s.parent_span_id == ""]
    assert not roots, roots[:5]


def test_metrics_are_scraped_from_the_metrics_port(availability: Running) -> None:
    for _ in range(3):
        httpx.get(f"{availability.url}/api/v1/calendars/work/conflicts",
                  params={"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}, headers=caller_headers())

    def scraped() -> str | None:
        r = httpx.get(f"{availability.metrics_url}/metrics", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        return text if "calmesh_outbox_oldest_unpublished_age_seconds{" in text else None

    text = wait_for(scraped, what="the sampled outbox gauge")
    route = 'route="/api/v1/calendars/{slug}/conflicts"'
    counted = [line for line in text.splitlines() if line.startswith("calmesh_http_requests_total{") and route in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 3, counted
    assert 'service="availability"' in counted[0] and 'method="GET"' in counted[0]
    assert any(line.startswith("calmesh_http_request_duration_seconds_bucket{") and route in line for line in text.splitlines())
    assert 'calmesh_outbox_unpublished_events{schema="availability",service="availability"}' in text
    # With a metrics port, the service's own port does not answer /metrics (a NetworkPolicy lets
    # the monitoring namespace reach the metrics port only).
    assert httpx.get(f"{availability.url}/metrics").status_code == 404


def test_liveness_is_cheap_and_open_and_each_request_is_one_access_log_line(availability: Running) -> None:
    r = httpx.get(f"{availability.url}/livez")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    marker = "obs-access-line-1"
    httpx.get(f"{availability.url}/api/v1/calendars/work/events", headers={**caller_headers(), "x-request-id": marker},
              params={"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"})
    import json

    def lines() -> list[dict] | None:
        found = []
        for raw in availability.log.read_text().splitlines():  # type: ignore[attr-defined]
            if marker in raw:
                found.append(json.loads(raw))
        access = [line for line in found if line.get("event") == "http_request"]
        return access or None

    [line] = wait_for(lines, what="the access-log line")
    assert line["route"] == "/api/v1/calendars/{slug}/events" and line["status"] == 404
    assert line["method"] == "GET" and line["service"] == "availability" and line["trace_id"]
    assert isinstance(line["duration_ms"], float | int)
    assert SECRET not in availability.log.read_text()  # type: ignore[attr-defined]


# The gateway: probes outside its route table, metrics per route, /api/health public and guarded --

@pytest.fixture(scope="module")
def lone_gateway(stack) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A gateway of the stack whose billing service is a dead port, with a small public limit."""
    env = dict(next(c for c in stack.children if c.name == "gateway").env)
    port = free_port()
    env.update({"CALMESH_PORT": str(port), "CALMESH_BILLING_URL": f"http://127.0.0.1:{free_port()}",
                "CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE": "5", "CALMESH_HEALTH_TIMEOUT_SECONDS": "1"})
    process = subprocess.Popen([str(Path(sys.executable).parent / "calmesh-gateway")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/readyz"), timeout=60, what="the gateway ready")
        yield url
    finally:
        process.terminate()
        process.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_gateway_is_live_and_ready_on_its_own_while_a_service_is_down(lone_gateway: str) -> None:
    assert httpx.get(f"{lone_gateway}/livez").json() == {"status": "ok"}
    ready = httpx.get(f"{lone_gateway}/readyz")
    # Readiness is this replica's own (database, NATS, its loops): a service that is down does not
    # take every gateway replica out of the load balancer. The answer names nothing internal.
    assert ready.status_code == 200 and ready.json() == {"status": "ok"}


def test_public_health_names_what_is_down_but_no_internal_error_and_is_rate_limited(lone_gateway: str) -> None:
    r = httpx.get(f"{lone_gateway}/api/health", timeout=10)
    assert r.status_code == 503 and r.json()["down"] == ["billing"]
    assert r.json()["checks"]["billing"] == "down: unreachable"
    assert "Error" not in r.text and "Exception" not in r.text  # no exception class names
    statuses = [httpx.get(f"{lone_gateway}/api/health", timeout=10) for _ in range(6)]
    limited = [s for s in statuses if s.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1


def test_the_gateway_counts_requests_per_route_and_serves_metrics_to_loopback_only(lone_gateway: str) -> None:
    for _ in range(2):
        httpx.get(f"{lone_gateway}/api/v1/me")
    text = httpx.get(f"{lone_gateway}/metrics").text
    line = next(line for line in text.splitlines()
                if line.startswith("calmesh_http_requests_total{") and 'route="/api/v1/me"' in line)
    assert 'service="gateway"' in line and 'status="401"' in line and float(line.rsplit(" ", 1)[1]) >= 2
    # A caller that is not on loopback (through the ingress) gets no metrics from the public port.
    from calmesh_gateway.front import GatewayFront

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    import asyncio

    from calmesh_common.settings import Settings

    from calmesh_common.metrics import Metrics

    front = GatewayFront(Settings.from_env({}, session_secret="s"), None, None, lambda: None)  # type: ignore[arg-type]
    front.metrics = Metrics("gateway")
    for client in (("203.0.113.9", 5555), ("127.0.0.1", 5555)):
        asyncio.run(front({"type": "http", "path": "/metrics", "method": "GET", "headers": [], "client": client},
                          None, send))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [404, 200]

"""Prometheus metrics of one CalMesh process, served at ``/metrics`` (text format 0.0.4).

One `Metrics` per process (made by the service kit, or the gateway), each with a registry of its
own, so that nothing is a module-level singleton and tests can build as many as they like. The
families, all prefixed ``calmesh_``:

- ``http_requests_total{service,route,method,status}`` and
  ``http_request_duration_seconds{service,route,method}``: every request, by route template;
- ``consumer_pending_messages{service,stream,consumer}`` and
  ``consumer_ack_pending_messages{...}``: JetStream backlog of each durable consumer the process
  runs (what KEDA scales sync workers on), sampled every few seconds;
- ``outbox_unpublished_events{service,schema}`` and ``outbox_oldest_unpublished_age_seconds{...}``:
  how far the outbox relay is behind;
- ``sync_runs_total{provider,outcome}`` and ``sync_errors_total{provider,kind}``,
  ``sync_duration_seconds{provider}``: sync workers;
- ``webhook_attempts_total{outcome}`` and ``webhook_attempt_duration_seconds``: the dispatcher.

The hot path only touches pre-labelled children (a dict lookup and an add); everything that needs
the database or NATS is sampled off the request path by `MetricsSampler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer, make_server, make_wsgi_app

from .logging import get_logger

log = get_logger(__name__)

#: The classic text format (what `generate_latest` writes), which every Prometheus version reads.
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"
METRICS_CONTENT_TYPE = f"{METRICS_MEDIA_TYPE}; charset=utf-8"
#: Latency buckets for HTTP requests (seconds): sub-millisecond through a slow forward.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SYNC_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metric families of one process (`service` is its label on every family)."""

    def __init__(self, service: str) -> None:
        self.service = service
        # No `_created` series beside every counter and histogram: half the output, no use here.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("calmesh_http_requests", "HTTP requests answered, by route template and status",
                                     ["service", "route", "method", "status"], registry=r)
        self.http_duration = Histogram("calmesh_http_request_duration_seconds", "Time to answer an HTTP request",
                                       ["service", "route", "method"], buckets=HTTP_BUCKETS, registry=r)
        self.consumer_pending = Gauge("calmesh_consumer_pending_messages",
                                      "Messages of the stream not yet delivered to the durable consumer",
                                      ["service", "stream", "consumer"], registry=r)
        self.consumer_ack_pending = Gauge("calmesh_consumer_ack_pending_messages",
                                          "Messages delivered to the durable consumer and not yet acknowledged",
                                          ["service", "stream", "consumer"], registry=r)
        self.outbox_unpublished = Gauge("calmesh_outbox_unpublished_events", "Committed events not yet on JetStream",
                                        ["service", "schema"], registry=r)
        self.outbox_age = Gauge("calmesh_outbox_oldest_unpublished_age_seconds",
                                "Age of the oldest committed event not yet on JetStream (0: none waiting)",
                                ["service", "schema"], registry=r)
        self.sync_runs = Counter("calmesh_sync_runs", "Sync jobs run, by provider and outcome",
                                 ["provider", "outcome"], registry=r)
        self.sync_errors = Counter("calmesh_sync_errors", "Failed syncs, by provider and kind of failure",
                                   ["provider", "kind"], registry=r)
        self.sync_duration = Histogram("calmesh_sync_duration_seconds", "Time one sync of a connection took",
                                       ["provider"], buckets=SYNC_BUCKETS, registry=r)
        self.webhook_attempts = Counter("calmesh_webhook_attempts", "Webhook delivery attempts, by outcome",
                                        ["outcome"], registry=r)
        self.webhook_duration = Histogram("calmesh_webhook_attempt_duration_seconds",
                                          "Time one webhook delivery attempt took", buckets=HTTP_BUCKETS, registry=r)
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request (cheap: the labelled children are made once per key)."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            with self._lock:
                children = (self.http_requests.labels(self.service, route, method, str(status)),
                            self.http_duration.labels(self.service, route, method))
                self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def sync_finished(self, provider: str, outcome: str, seconds: float, error_kind: str | None = None) -> None:
        self.sync_runs.labels(provider, outcome).inc()
        self.sync_duration.labels(provider).observe(seconds)
        if error_kind is not None:
            self.sync_errors.labels(provider, error_kind).inc()

    def webhook_attempted(self, outcome: str, seconds: float) -> None:
        self.webhook_attempts.labels(outcome).inc()
        self.webhook_duration.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve ``/metrics`` on a port of its own (a daemon thread); returns a stop function.

        Used when CALMESH_METRICS_PORT is set, so that a NetworkPolicy can let the monitoring
        namespace reach the metrics port without reaching the service's API."""
        app = make_wsgi_app(self.registry)
        server = make_server(host, port, app, ThreadingWSGIServer)
        thread = threading.Thread(target=server.serve_forever, name=f"metrics-{self.service}", daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop


@dataclass
class ConsumerRef:
    """A durable consumer whose backlog is sampled."""

    stream: str
    consumer: str


@dataclass
class MetricsSampler:
    """Samples what needs a query: consumer backlogs (JetStream) and outbox lag (PostgreSQL)."""

    metrics: Metrics
    js: Any
    pool: Any
    schema: str
    consumers: Sequence[ConsumerRef] = ()
    interval: float = 5.0
    extra: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def sample(self) -> None:
        m, service = self.metrics, self.metrics.service
        for ref in self.consumers:
            try:
                info = await self.js.consumer_info(ref.stream, ref.consumer, timeout=2)
            except Exception as exc:  # noqa: BLE001 - a missed sample, not a failure of the service
                log.debug("metrics_consumer_sample_failed", consumer=ref.consumer, error=repr(exc))
                continue
            m.consumer_pending.labels(service, ref.stream, ref.consumer).set(info.num_pending or 0)
            m.consumer_ack_pending.labels(service, ref.stream, ref.consumer).set(info.num_ack_pending or 0)
        try:
            row = await self.pool.fetchrow(
                f"SELECT count(*) AS waiting, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
                f" FROM {self.schema}.outbox WHERE published_at IS NULL"
            )
        except Exception as exc:  # noqa: BLE001 - as above
            log.debug("metrics_outbox_sample_failed", schema=self.schema, error=repr(exc))
        else:
            m.outbox_unpublished.labels(service, self.schema).set(row["waiting"])
            m.outbox_age.labels(service, self.schema).set(float(row["age"]))
        for hook in self.extra:
            await hook()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.sample()
            await asyncio.sleep(self.interval)

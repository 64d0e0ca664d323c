"""OpenTelemetry tracing with W3C trace context carried across HTTP and NATS headers.

Spans are exported over OTLP when the standard variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` = ``http/protobuf``,
the default, or ``grpc``; headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER`` and the ``OTEL_BSP_*`` batch settings as the SDK reads them), through a
batch span processor; ``CALMESH_OTEL_CONSOLE=1`` prints them too. With an exporter, the httpx,
asyncpg and aiohttp client instrumentations add a span per outgoing call and database query.
Without one, spans still carry ids into logs and across services, and nothing else is paid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

_propagator = TraceContextTextMapPropagator()
_getter = DefaultGetter()
_configured = False
_exporting = False


class BackgroundClientRootsDropped(Sampler):
    """Samples every trace but those that would start with a client span: a database query or an
    HTTP call made outside any request, message or job (the outbox relay's poll, the metrics
    sampler, a scheduler tick) is a trace of one span a second per process, noise that costs."""

    def should_sample(self, parent_context: otel_context.Context | None, trace_id: int, name: str,
                      kind: trace.SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[trace.Link] | None = None, trace_state: TraceState | None = None) -> SamplingResult:
        if kind == trace.SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "BackgroundClientRootsDropped"


def otlp_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for OTLP trace export."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def otlp_exporter(env: Mapping[str, str] | None = None) -> SpanExporter:
    """The OTLP span exporter the variables name (http/protobuf unless grpc is asked for); it reads
    its endpoint, headers, timeout and compression from the same variables."""
    env = os.environ if env is None else env
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol.lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def instrument_clients() -> None:
    """Spans for every httpx request, asyncpg query and aiohttp request of this process (each
    also carries the trace context to the callee)."""
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    for instrumentor in (HTTPXClientInstrumentor(), AsyncPGInstrumentor(), AioHttpClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def setup_tracing(service_name: str, *, console: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider for this process (once); returns whether spans are exported.

    OTLP export (batch processor) when the OTEL_* variables configure it, the console when
    `console` is set; otherwise spans still carry ids for logs and propagation."""
    global _configured, _exporting
    if _configured:
        return _exporting
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        _configured = True
        return False
    # OTEL_SERVICE_NAME, when set, names the service (Resource.create reads it and the
    # OTEL_RESOURCE_ATTRIBUTES); the attributes given here would override it.
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": f"calmesh-{service_name}"}
    # OTEL_TRACES_SAMPLER, when set, is the SDK's to read; by default no background roots.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else ParentBased(root=BackgroundClientRootsDropped())
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if otlp_configured(env):
        provider.add_span_processor(BatchSpanProcessor(otlp_exporter(env)))
        _exporting = True
    if console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        _exporting = True
    trace.set_tracer_provider(provider)
    if _exporting:
        instrument_clients()
    _configured = True
    return _exporting


def spans_exported() -> bool:
    """Whether finished spans go anywhere (so that recording them is worth its cost)."""
    return _exporting


def shutdown_tracing() -> None:
    """Flush the batch processor (at process exit: spans still queued are sent)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def tracer(name: str = "calmesh") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to `headers`; returns it."""
    _propagator.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried by `headers` (HTTP or NATS), or an empty one."""
    if not headers:
        return otel_context.Context()
    lowered = {k.lower(): v for k, v in headers.items()}
    return _propagator.extract(lowered, getter=_getter)


def current_trace_id() -> str | None:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x")


def traceparent_of(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

"""One process's tracer provider, chosen by the settings (``AF_TRACE_*``).

With ``trace_exporter = "none"`` (the default) the OpenTelemetry SDK is never
imported and :func:`mesh.trace.recording` stays False: the hot paths open no
span. Otherwise sampling is parent-based (a message from a traced caller follows
its caller's decision) with new traces drawn at the sample ratio, and spans are
exported in batches from a background thread, so a span costs the task path its
creation only. The ratio is applied by :mod:`mesh.trace` before the SDK is asked
(an unsampled trace costs no span objects); the SDK's own sampler is
``ParentBased(ALWAYS_ON)``, so a span an agent opens outside any run is recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace as otel_trace

from mesh import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.settings import Settings

__all__ = ["SERVICE_NAME", "exporter_for", "provider_for", "tracing"]

SERVICE_NAME = "agent-factory"


def exporter_for(settings: Settings) -> SpanExporter:
    """The exporter ``trace_exporter`` names (not ``none``), sending to ``trace_endpoint``."""
    # Imported here, not at the top: a process with tracing off never loads them.
    kind, endpoint = settings.trace_exporter, settings.trace_endpoint
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415 (lazy: tracing off)

        return ConsoleSpanExporter()
    if kind == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415 (lazy)
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint) if endpoint else GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 (lazy)
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint) if endpoint else HttpExporter()


def provider_for(settings: Settings, process: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider for ``process`` sampling as the settings say, exporting to
    ``exporter`` (default: the settings' exporter) in batches."""
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 (lazy: tracing off)
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 (lazy: tracing off)
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415 (lazy: tracing off)
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased  # noqa: PLC0415 (lazy)

    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": process})
    # Parent-based; a new trace is drawn at the ratio by mesh.trace before any span is
    # made (so an unsampled trace costs no span objects), and the SDK records what it was given.
    sampler = ParentBased(ALWAYS_ON)
    provider = TracerProvider(resource=resource, sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter or exporter_for(settings)))
    return provider


@contextmanager
def tracing(settings: Settings, process: str) -> Iterator[TracerProvider | None]:
    """Record this process's spans as the settings say while the block runs, then flush
    what is left and stop. Yields the provider, or None with tracing off."""
    if settings.trace_exporter == "none":
        yield None
        return
    provider = provider_for(settings, process)
    # Also the global provider, so an agent's own spans (OpenTelemetry's API) join its run's trace.
    otel_trace.set_tracer_provider(provider)
    trace.use(provider, settings.sample_ratio)
    try:
        yield provider
    finally:
        trace.use(None)
        provider.shutdown()

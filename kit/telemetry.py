"""OpenTelemetry: one tracer provider per process; context carried through task headers.

FastAPI opens the server span of each HTTP request itself (continuing a caller's
`traceparent`); Celery tasks and sandbox calls join that trace through `inject`/`extract`.
"""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from kit import logsafe
from kit.settings import get_settings


@functools.cache
def setup_tracing(service_name: str) -> None:
    """Install the tracer provider once, exporting to the console or OTLP per settings (and the
    log redaction every process needs)."""
    logsafe.install()
    settings = get_settings()
    if settings.telemetry_exporter == "none":
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if settings.telemetry_exporter == "console":
        # Printed as each span ends, so a process's log holds its spans when it stops.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
    trace.set_tracer_provider(provider)


def tracing_configured() -> bool:
    """Whether a real tracer provider is installed in this process."""
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def tracer(name: str) -> trace.Tracer:
    """A tracer for a module."""
    return trace.get_tracer(name)


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`), to hand to another process."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: dict[str, Any] | None) -> Any:
    """A context from headers made by `inject()`."""
    return propagate.extract(carrier or {})


"""OpenTelemetry: one tracer provider per process; context carried through task headers."""

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
from starlette.types import ASGIApp, Receive, Scope, Send

from kit.settings import get_settings


@functools.cache
def setup_tracing(service_name: str) -> None:
    """Install the tracer provider once, exporting to the console or OTLP per settings."""
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


class TracingMiddleware:
    """A server span per HTTP request, continuing a caller's `traceparent` if it sent one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("mediagate.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, context=extract(headers), kind=trace.SpanKind.SERVER) as span:
            async def send_with_status(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, send_with_status)

"""One trace from the API through Celery into the worker's sandbox calls."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import create_app
from tests.e2e.api_support import FLAKY_PRICING
from tests.e2e.conftest import World
from tests.support import FIXTURE_MODELS


def test_submit_and_run_share_one_trace(committed, worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # only the first call in a process takes effect
    if trace.get_tracer_provider() is not provider:
        pytest.skip("a tracer provider was installed earlier in this process")
    # Built after the provider is installed, the app traces its requests.
    with TestClient(create_app()) as api:
        _one_trace(api, worker, exporter, tmp_path)


def _one_trace(api, worker, exporter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "flaky", slug="flaky", pricing=FLAKY_PRICING)
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=30"},
                    json={"input": {}}).json()
    assert body["status"] == "succeeded"
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("POST /v1/models")]
    http_span = spans[0]
    assert {s.context.trace_id for s in spans} == {http_span.context.trace_id}, [s.name for s in spans]
    trace_id = format(http_span.context.trace_id, "032x")
    # The worker exports its spans in batches, each span when it ends: the task's own span
    # ends after the request is already answered as succeeded.
    wanted = (f'"trace_id": "0x{trace_id}"', '"name": "gateway.run_request"', '"name": "sandbox.predict"')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = worker.output()
        if all(w in log for w in wanted):
            break
        time.sleep(0.2)
    log = worker.output()
    assert f'"trace_id": "0x{trace_id}"' in log, "the worker's spans are not in the API's trace"
    assert '"name": "gateway.run_request"' in log and '"name": "sandbox.predict"' in log

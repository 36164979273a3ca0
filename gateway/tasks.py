"""Celery tasks of the gateway."""

from __future__ import annotations

from gateway import runs, sweeps, webhooks
from kit.tasks import get_celery
from kit.telemetry import tracer as get_tracer

celery = get_celery()
tracer = get_tracer("mediagate.worker")


@celery.task(name="gateway.run_request")
def run_request(request_id: str) -> None:
    """Run one customer request on its deployment (idempotent)."""
    with tracer.start_as_current_span("gateway.run_request", attributes={"mediagate.request_id": request_id}):
        runs.execute(request_id)


@celery.task(name="gateway.deliver_webhook")
def deliver_webhook(delivery_id: str) -> None:
    """One attempt at a webhook delivery (idempotent: a delivery not due is left alone)."""
    webhooks.deliver(delivery_id)


@celery.task(name="gateway.sweep")
def sweep() -> None:
    """One round of housekeeping: deadlines, due webhook retries, retention."""
    sweeps.tick()

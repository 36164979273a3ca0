"""Celery tasks of the gateway."""

from __future__ import annotations

from gateway import runs
from kit.tasks import get_celery

celery = get_celery()


@celery.task(name="gateway.run_request")
def run_request(request_id: str) -> None:
    """Run one customer request on its deployment (idempotent)."""
    runs.execute(request_id)

"""The Celery app, and enqueueing that happens only when the transaction commits."""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery, signals
from opentelemetry import context as otel_context
from sqlalchemy.orm import Session

from kit import telemetry
from kit.db import after_commit, reset_engine
from kit.settings import get_settings

DEFAULT_QUEUE = "default"


def pool_queue(pool: str) -> str:
    """The Celery queue that serves an SLA pool."""
    return f"pool.{pool}"


@functools.cache
def get_celery() -> Celery:
    """The process-wide Celery app, configured from settings."""
    settings = get_settings()
    app = Celery("mediagate", broker=settings.celery_broker_url)
    app.conf.update(
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A running task is never cut short when Redis goes away; if its message comes back,
        # the request's lease tells the second delivery to leave it alone.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    if settings.celery_broker_url.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport = "kit.broker:EmbeddedTransport"
    else:
        # The broker's backstop for a message whose worker vanished; requests do not wait for
        # it: their leases lapse sooner and the housekeeping tick queues them again.
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    return app


def send_now(name: str, *args: Any, queue: str = DEFAULT_QUEUE, **options: Any) -> None:
    """Send a task by name at once, carrying the current trace context."""
    get_celery().send_task(name, args=list(args), queue=queue, headers=telemetry.inject(), **options)


def enqueue(session: Session, name: str, *args: Any, queue: str = DEFAULT_QUEUE, **options: Any) -> None:
    """Send a task once `session` commits; a rollback drops it."""
    headers = telemetry.inject()
    after_commit(
        session,
        lambda: get_celery().send_task(name, args=list(args), queue=queue, headers=headers, **options),
    )


# A task runs inside the trace of whoever enqueued it.
_task_tokens: dict[str, Any] = {}


@signals.task_prerun.connect
def _attach_trace(task_id: str, task: Any, **_: Any) -> None:
    headers = getattr(task.request, "headers", None) or {}
    carrier = {k: v for k, v in (headers.items() if isinstance(headers, dict) else [])}
    carrier.update({k: getattr(task.request, k) for k in ("traceparent", "tracestate")
                    if getattr(task.request, k, None)})
    _task_tokens[task_id] = otel_context.attach(telemetry.extract(carrier))


@signals.task_postrun.connect
def _detach_trace(task_id: str, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        otel_context.detach(token)


@signals.worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    reset_engine()

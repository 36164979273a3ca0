"""The Celery entry point: `celery -A gateway.worker worker` (or `mediagate worker`)."""

from __future__ import annotations

from celery import signals

from billing import tasks as billing_tasks  # noqa: F401  - registers billing tasks and beat
from gateway import tasks  # noqa: F401  - registers the tasks
from kit.db import assert_migrated
from kit.tasks import get_celery
from kit.telemetry import setup_tracing
from moderation import service as moderation

app = get_celery()


@signals.worker_init.connect
def _check_schema(**_: object) -> None:
    setup_tracing("mediagate-worker")
    assert_migrated()
    moderation.warm_up()


@signals.worker_ready.connect
def _start_housekeeping(**_: object) -> None:
    from gateway.sweeps import start_ticker

    start_ticker()


@signals.worker_shutdown.connect
def _stop_replicas(**_: object) -> None:
    from gateway.runs import replica_pool

    replica_pool().close()

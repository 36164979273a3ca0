"""The Celery entry point: `celery -A gateway.worker worker` (or `mediagate worker`)."""

from __future__ import annotations

import os

from celery import signals

from billing import tasks as billing_tasks  # noqa: F401  - registers billing tasks and beat
from gateway import tasks  # noqa: F401  - registers the tasks
from kit.db import assert_migrated
from kit.tasks import get_celery
from kit.telemetry import setup_tracing
from moderation import service as moderation
from partners.tenancy import deployments

app = get_celery()


@signals.worker_init.connect
def _check_schema(**_: object) -> None:
    setup_tracing("mediagate-worker")
    assert_migrated()
    moderation.warm_up()


@signals.worker_ready.connect
def _start_housekeeping(**_: object) -> None:
    from gateway.runs import replica_pool
    from gateway.sweeps import start_ticker

    start_ticker()
    pools = [p for p in os.environ.get("MEDIAGATE_WORKER_POOLS", "shared").split(",") if p]
    deployments.start_keeper(replica_pool(), pools)


@signals.worker_shutdown.connect
def _stop_replicas(**_: object) -> None:
    from gateway.runs import replica_pool

    replica_pool().close()

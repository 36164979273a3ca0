"""Fault-test fixtures: the API in-process, real Celery workers the test may kill, a deployed
model, and short leases so a lost worker's request moves on within seconds."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from gateway.models import FINAL_STATUSES, Request
from kit.db import session_scope
from kit.settings import get_settings
from tests.e2e.conftest import World
from tests.support import WorkerProcess

# A lease lapses 3 s after its worker stops renewing (slack for a loaded machine); the tick
# looks every 0.2 s.
FAULT_ENV = {
    "MEDIAGATE_GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1",
    "MEDIAGATE_GATEWAY_WEBHOOK_BACKOFF_SCALE": "0.0001",
    "MEDIAGATE_GATEWAY_SWEEP_INTERVAL_S": "0.2",
    "MEDIAGATE_GATEWAY_REQUEUE_DELAY_S": "0.1",
    "MEDIAGATE_GATEWAY_LEASE_S": "3",
    "MEDIAGATE_GATEWAY_LEASE_RENEW_S": "0.3",
    "MEDIAGATE_GATEWAY_RETRY_DELAY_S": "0.2",
    "MEDIAGATE_GATEWAY_REQUEUE_STALE_S": "5",
    "MEDIAGATE_GATEWAY_MAX_ATTEMPTS": "3",
    "MEDIAGATE_RUNNER_PREDICT_TIMEOUT_S": "30",
}


@pytest.fixture
def api(committed: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The whole API in this process (webhooks to this machine allowed); tables emptied after."""
    from gateway.app import create_app
    from gateway.config import get_gateway_settings

    monkeypatch.setenv("MEDIAGATE_GATEWAY_WEBHOOK_ALLOW_PRIVATE", "1")
    get_gateway_settings.cache_clear()
    with TestClient(create_app()) as client:
        yield client
    get_gateway_settings.cache_clear()


@pytest.fixture
def start_worker(engine: Engine) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real workers with the fault timings; whatever is left of them is stopped after.

    The test's Redis database is emptied first (never while a worker is connected: that
    would drop the broker's queue bindings under it).
    """
    import redis

    redis.Redis.from_url(get_settings().redis_url).flushdb()
    started: list[WorkerProcess] = []

    def start(pools: str = "shared", concurrency: int = 2, **env: str) -> WorkerProcess:
        proc = WorkerProcess(pools=pools, concurrency=concurrency, env={**FAULT_ENV, **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def deploy(api: TestClient, tmp_path: Path) -> Callable[..., World]:
    """Deploy a fixture model (or example) for a fresh customer, priced per `unit`."""
    def make(model_dir: Path, *, unit: str = "requests", price_micros: int = 1_000, **kw: Any) -> World:
        return World(api, tmp_path, model_dir=model_dir, slug=model_dir.name,
                     pricing={"tier": "open", "unit": unit, "unit_price_micros": price_micros}, **kw)
    return make


def request_row(request_id: str) -> Request:
    """The request as the database has it now."""
    with session_scope() as session:
        req = session.get(Request, request_id)
        assert req is not None, request_id
        session.expunge(req)
        return req


def wait_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_final(request_id: str, timeout: float = 60) -> Request:
    """The request once it reached a final status."""
    return wait_until(lambda: (r := request_row(request_id)).status in FINAL_STATUSES and r,
                      timeout=timeout, what=f"request {request_id} to finish")


def holder(req: Request, workers: list[WorkerProcess]) -> WorkerProcess:
    """The worker whose lease the running request carries."""
    assert req.lease_owner is not None
    pid = int(req.lease_owner.split("/")[1])
    (proc,) = [w for w in workers if w.process.pid == pid]
    return proc


def kill_group(proc: WorkerProcess, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a worker's whole process group; the pids of its descendants before the signal."""
    family = [p.pid for p in psutil.Process(proc.process.pid).children(recursive=True)]
    os.killpg(proc.process.pid, sig)
    return family


def sandboxed_runners(proc: WorkerProcess) -> list[psutil.Process]:
    """The model runner processes inside a worker's sandboxes (host pids)."""
    return [p for p in psutil.Process(proc.process.pid).children(recursive=True)
            if "engine.runner" in " ".join(p.cmdline())]


def message_held(request_id: str) -> bool:
    """The request's task message is out with a worker, unacknowledged, and no copy of it waits
    in a queue (kombu's Redis transport keeps delivered messages in its `unacked` hash)."""
    import redis

    client = redis.Redis.from_url(get_settings().redis_url)
    needle = request_id.encode()
    held = any(needle in payload for payload in client.hvals("unacked"))
    queued = any(needle in payload for key in client.scan_iter(_type="list")
                 for payload in client.lrange(key, 0, -1))
    return held and not queued


def housekeeping_ran() -> bool:
    """A worker has done a housekeeping round since Redis was emptied: the broker-loss marker
    is set (`gateway.recovery`). Before that round, the next worker's first round takes every
    queued request for lost with the broker and sends it again, whatever else happened."""
    import redis

    from gateway.recovery import MARKER_KEY

    return bool(redis.Redis.from_url(get_settings().redis_url).exists(MARKER_KEY))


def freeze_holding(proc: WorkerProcess, request_id: str, timeout: float) -> None:
    """Stop the worker's process group at an instant when it holds the request's message.

    Checked while the worker is stopped, so the state cannot change between the look and a
    kill that follows: a worker caught just after re-sending the message (a copy queued) is
    let go and caught again."""
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(proc.process.pid, signal.SIGSTOP)
        if message_held(request_id):
            return
        os.killpg(proc.process.pid, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker never held request {request_id}'s message alone")
        time.sleep(0.05)


def warnings(workers: list[WorkerProcess]) -> str:
    """The workers' warnings and errors, to explain a failed assertion."""
    return "\n".join(f"[{w.process.pid}] {line}" for w in workers for line in w.output().splitlines()
                     if "WARNING" in line or "ERROR" in line)

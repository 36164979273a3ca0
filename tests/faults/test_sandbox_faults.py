"""Sandboxes that die, fill their memory cap or crash every time: the request is retried or
fails cleanly and uncharged, and the worker goes on serving."""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import func, select

from billing.models import UsageRecord
from kit.db import session_scope
from tests.faults.conftest import request_row, sandboxed_runners, wait_final, wait_until, warnings
from tests.faults.invariants import assert_invariants
from tests.support import FIXTURE_MODELS

pytestmark = pytest.mark.timeout(120)


def _submit(api, world, inputs: dict) -> str:  # type: ignore[no-untyped-def]
    r = api.post(f"/v1/models/{world.model}/requests", headers=world.customer, json={"input": inputs})
    assert r.status_code in (200, 201, 202), r.text
    return r.json()["id"]


def _charges() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord)) or 0


def test_killed_sandbox_mid_request_is_retried_and_the_next_request_is_served(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    world = deploy(FIXTURE_MODELS / "flaky", unit="images", price_micros=40_000)
    worker = start_worker()
    assert wait_final(_submit(api, world, {})).status == "succeeded"  # a warm replica, set up
    (runner,) = sandboxed_runners(worker)
    request_id = _submit(api, world, {"mode": "sleep", "seconds": 3})
    wait_until(lambda: request_row(request_id).status == "running", timeout=45, what="the request to start")
    time.sleep(0.5)  # the warm replica is in the model's predict by now
    runner.send_signal(signal.SIGKILL)

    done = wait_final(request_id)
    assert done.status == "succeeded" and done.attempts == 2, (done.error, warnings([worker]))
    assert _charges() == 2
    assert runner.pid not in [p.pid for p in sandboxed_runners(worker)]
    after = wait_final(_submit(api, world, {}))
    assert after.status == "succeeded" and after.attempts == 1, after.error
    assert worker.process.poll() is None
    assert_invariants()


def test_model_past_its_memory_cap_fails_clearly_and_the_worker_stays_healthy(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    world = deploy(FIXTURE_MODELS / "memhog")  # hardware.memory_gb = 1: the sandbox's floor of 2 GiB
    worker = start_worker()
    hog = wait_final(_submit(api, world, {"mib": 6144}))
    # Under an address-space cap the model meets a MemoryError, under a cgroup v2 cap the
    # kernel kills the sandbox: either way one attempt (it would fill its cap again), one
    # plain error.
    assert hog.status == "failed" and hog.attempts == 1, hog.error
    assert "ran out of memory" in (hog.error or "") and "MemoryError" not in (hog.error or "")
    body = api.get(f"/v1/requests/{hog.id}", headers=world.customer).json()
    assert body["cost"]["amount_micros"] == 0 and body["error"] == hog.error
    assert _charges() == 0

    modest = wait_final(_submit(api, world, {"mib": 256}))
    assert modest.status == "succeeded" and modest.output["allocated_mib"] == 256, modest.error
    assert worker.process.poll() is None
    assert_invariants()


def test_model_that_crashes_every_time_fails_after_its_attempts_uncharged(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    world = deploy(FIXTURE_MODELS / "flaky", unit="images", price_micros=40_000)
    worker = start_worker()
    crashed = wait_final(_submit(api, world, {"mode": "exit"}))
    assert crashed.status == "failed" and crashed.attempts == 3, (crashed.error, warnings([worker]))
    assert "stopped mid-request" in (crashed.error or "") and "after 3 attempts" in (crashed.error or "")
    assert "nothing was charged" in (crashed.error or "")
    assert _charges() == 0

    fine = wait_final(_submit(api, world, {}))
    assert fine.status == "succeeded", fine.error
    assert worker.process.poll() is None
    assert_invariants()

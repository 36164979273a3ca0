"""Workers that die or stall mid-request: the request runs again elsewhere, finishes once,
is charged once, and the worker that comes back late records nothing."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from sqlalchemy import func, select

from billing.models import UsageRecord
from kit.db import session_scope, utcnow
from tests.e2e.api_support import Receiver
from tests.e2e.conftest import ADMIN
from tests.faults.conftest import (
    freeze_holding,
    holder,
    housekeeping_ran,
    kill_group,
    request_row,
    sandboxed_runners,
    wait_final,
    wait_until,
    warnings,
)
from tests.faults.invariants import assert_invariants
from tests.support import FIXTURE_MODELS

pytestmark = pytest.mark.timeout(150)
SLOW = {"mode": "sleep", "seconds": 4}


def _submit(api, world, receiver: Receiver | None = None) -> str:  # type: ignore[no-untyped-def]
    body: dict = {"input": SLOW}
    if receiver is not None:
        body["webhook"] = receiver.url
    r = api.post(f"/v1/models/{world.model}/requests", headers=world.customer, json=body)
    assert r.status_code in (200, 201, 202), r.text
    return r.json()["id"]


def _running(request_id: str):  # type: ignore[no-untyped-def]
    return wait_until(lambda: (r := request_row(request_id)).status == "running" and r,
                      timeout=45, what=f"request {request_id} to start")


def _alive(pids: list[int]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {proc.status()} ppid={proc.ppid()} {' '.join(proc.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _usage_count(request_id: str) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.request_id == request_id))


def test_sigkilled_worker_request_finishes_on_another_worker_once(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    world = deploy(FIXTURE_MODELS / "flaky", unit="images", price_micros=40_000)
    workers = [start_worker(), start_worker()]
    receiver = Receiver()
    try:
        request_id = _submit(api, world, receiver)
        doomed = holder(_running(request_id), workers)
        wait_until(lambda: sandboxed_runners(doomed), timeout=30, what="the model's sandbox to start")
        family = kill_group(doomed)

        done = wait_final(request_id, timeout=60)
        assert done.status == "succeeded", (done.error, warnings(workers))
        assert done.attempts == 2 and done.lease_expires_at is None, warnings(workers)
        survivor = next(w for w in workers if w is not doomed)
        assert str(survivor.process.pid) in (done.lease_owner or "")
        assert _usage_count(request_id) == 1
        assert api.get(f"/v1/requests/{request_id}", headers=world.customer).json()["cost"]["amount_micros"] == 40_000
        # The killed worker's sandboxes died with it.
        deadline = time.monotonic() + 20
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(family), "the killed worker's sandboxes outlived it"
        # One `request.succeeded`, whatever the retries of its delivery.
        calls = receiver.wait(1)
        assert_invariants(received_webhooks=[(c["headers"]["webhook-id"], c["body"]) for c in calls],
                          settle_s=10)
        assert [c for c in calls if b"request.succeeded" in c["body"]]
    finally:
        receiver.close()


def test_stalled_worker_that_comes_back_late_records_nothing(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    world = deploy(FIXTURE_MODELS / "flaky", unit="images", price_micros=40_000)
    workers = [start_worker(), start_worker()]
    request_id = _submit(api, world)
    stalled = holder(_running(request_id), workers)
    # As if cut off from the network: the worker is alive but silent, its model runs on.
    os.kill(stalled.process.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        retaken = wait_until(lambda: (r := request_row(request_id)).attempts == 2 and r.status == "running" and r,
                             timeout=30, what="another worker to take the request over")
        retaken_at = utcnow()
        # Back once its own model has finished, while the other worker's run still has seconds to go.
        time.sleep(max(0.0, stopped_at + SLOW["seconds"] + 0.5 - time.monotonic()))
    finally:
        os.kill(stalled.process.pid, signal.SIGCONT)
    wait_until(lambda: "lost its lease" in stalled.output(),
               timeout=20, what="the late worker to notice it lost the request")
    done = wait_final(request_id, timeout=60)
    assert done.status == "succeeded" and done.attempts == 2, (done.error, warnings(workers))
    assert done.lease_owner == retaken.lease_owner and holder(done, workers) is not stalled
    # The result is the second worker's: its model needed its full run after taking over.
    assert done.completed_at is not None
    assert (done.completed_at - retaken_at).total_seconds() > SLOW["seconds"] - 1
    assert _usage_count(request_id) == 1
    # Both workers still serve.
    for _ in range(2):
        again = wait_final(_submit(api, world), timeout=60)
        assert again.status == "succeeded", again.error
    assert_invariants(settle_s=10)


def test_messages_a_killed_worker_held_are_sent_again(api, start_worker, deploy) -> None:  # type: ignore[no-untyped-def]
    # One request at a time for this account: the second waits on a short countdown message,
    # which the worker holds. Killed, it takes that message with it (the broker would give it
    # back only after its visibility timeout, an hour).
    world = deploy(FIXTURE_MODELS / "flaky", unit="images", price_micros=40_000)
    r = api.put(f"/v1/admin/accounts/{world.account_id}/limits", json={"max_concurrency": 1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    first = start_worker(MEDIAGATE_GATEWAY_REQUEUE_DELAY_S="2")  # the message is held 2 s of every ~2
    running_id = _submit(api, world)
    waiting_id = _submit(api, world)
    _running(running_id)
    wait_until(lambda: request_row(waiting_id).lease_expires_at is not None, timeout=20,
               what="the second request to wait for the account's slot")
    wait_until(lambda: sandboxed_runners(first), timeout=30, what="the model's sandbox to start")
    # A first worker killed before its first housekeeping round would leave the broker-loss
    # marker unset, and the next worker would resend everything as lost with the broker.
    wait_until(housekeeping_ran, timeout=20, what="the first worker's first housekeeping round")
    # Killed while it holds the countdown message, not in the instant between a re-send and
    # the next fetch, when the copy in the queue would simply go to the next worker: the
    # worker is stopped, looked at, and killed only if the look found the message held.
    freeze_holding(first, waiting_id, timeout=20)
    kill_group(first)

    second = start_worker()
    done = [wait_final(running_id, timeout=60), wait_final(waiting_id, timeout=60)]
    assert [(r.status, r.attempts) for r in done] == [("succeeded", 2), ("succeeded", 1)], (
        [r.error for r in done], warnings([first, second]))
    assert any("past their resend time were sent again" in line and waiting_id in line
               for line in warnings([second]).splitlines()), warnings([first, second])
    assert _usage_count(running_id) == _usage_count(waiting_id) == 1
    assert_invariants(settle_s=10)

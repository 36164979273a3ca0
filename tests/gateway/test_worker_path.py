"""The worker's claim and finish on real PostgreSQL: what each reads, one charge per success,
and nothing recorded by an attempt that no longer holds the request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from billing.models import LedgerEntry, UsageRecord
from gateway import events, runs, service
from gateway.models import Request
from kit.db import get_engine, session_scope
from moderation.models import ModerationRecord
from tests.support import deploy_stepper

pytestmark = pytest.mark.timeout(120)
OWNER = "worker-test"


def _submitted(tmp: Path) -> str:
    """A priced, deployed model and one queued request for it; returns the request id."""
    with session_scope() as s:
        account, ref = deploy_stepper(s, tmp)
        owner, model = ref.split("/")
        return service.submit(s, account, owner=owner, model_slug=model, input={"steps": 1}).request.id


@contextmanager
def _statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()))

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)


def _claim(request_id: str, owner: str = OWNER) -> runs.Claim:
    with session_scope() as s:
        claimed = runs.claim(s, request_id, owner=owner)
    assert claimed is not None
    return claimed


def _charges(request_id: str) -> list[UsageRecord]:
    with session_scope() as s:
        return list(s.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)))


def test_the_claim_reads_request_deployment_model_and_input_record_in_one_statement(
        committed: Engine, tmp_path: Path) -> None:
    request_id = _submitted(tmp_path)
    with session_scope() as s:  # as the input check records a minor signal and the request's options
        record = s.scalars(select(ModerationRecord).where(ModerationRecord.request_id == request_id)).one()
        record.request_options, record.minor_signal = {"enable_safety_checker": False}, True
    with _statements() as seen:
        claimed = _claim(request_id)
    reads = [s for s in seen if "model_versions" in s or "moderation_records" in s or "FROM deployments" in s
             or "FROM models" in s]
    assert len(reads) == 1 and "FOR UPDATE OF requests" in reads[0], reads  # the replica spec reads none again
    assert claimed.partner_id.startswith("par_") and claimed.spec.deployment_id.startswith("dep_")
    assert claimed.input_options == {"enable_safety_checker": False} and claimed.minor_signal is True
    with session_scope() as s:
        req = s.get(Request, request_id)
        assert (req.status, req.attempts, req.lease_owner) == ("running", 1, OWNER)


def test_a_success_is_charged_once_and_the_finish_reads_no_row_the_claim_had(
        committed: Engine, tmp_path: Path) -> None:
    request_id = _submitted(tmp_path)
    claimed = _claim(request_id)
    result = {"output": {"value": 7}, "units": {"requests": 1}}
    with _statements() as seen:
        runs._succeed(claimed, result, tmp_path / "none", run_ms=3)
    assert not [s for s in seen if s.startswith("SELECT") and ("moderation_records" in s or "FROM models" in s)]
    # The lease check is the WHERE of the UPDATE that takes the request back: no locking read.
    on_requests = [s for s in seen if "requests" in s.split(" WHERE ")[0] and "usage_records" not in s]
    assert on_requests[0].startswith("UPDATE requests SET lease_expires_at") and "RETURNING" in on_requests[0]
    assert "lease_owner" in on_requests[0] and not [s for s in on_requests if s.startswith("SELECT")], on_requests
    runs._succeed(claimed, result, tmp_path / "none", run_ms=3)  # a second finish records nothing
    [usage] = _charges(request_id)
    with session_scope() as s:
        req = s.get(Request, request_id)
        assert (req.status, req.cost_micros, req.output, req.lease_expires_at) == ("succeeded", 100, {"value": 7}, None)
        legs = list(s.scalars(select(LedgerEntry).where(LedgerEntry.usage_id == usage.id)))
        assert sum(leg.amount_micros for leg in legs) == 0 and len(legs) == 2
        stages = s.scalars(select(ModerationRecord.stage).where(ModerationRecord.request_id == request_id))
        assert sorted(stages) == ["input", "output"]


def test_an_attempt_that_lost_the_request_records_nothing(committed: Engine, tmp_path: Path) -> None:
    request_id = _submitted(tmp_path)
    claimed = _claim(request_id)
    with session_scope() as s:  # the lease lapsed and another worker took the request over
        req = s.get(Request, request_id)
        req.attempts, req.lease_owner = req.attempts + 1, "another/worker"
    runs._succeed(claimed, {"output": 1, "units": {"requests": 1}}, tmp_path / "none", run_ms=3)
    assert _charges(request_id) == []
    with session_scope() as s:
        assert s.get(Request, request_id).status == "running"


def test_canceled_and_unchargeable_results_end_uncharged(committed: Engine, tmp_path: Path) -> None:
    canceled, bad = _submitted(tmp_path), _submitted(tmp_path)
    first, second = _claim(canceled), _claim(bad)
    with session_scope() as s:
        s.get(Request, canceled).cancel_requested = True
    runs._succeed(first, {"output": 1, "units": {"requests": 1}}, tmp_path / "none", run_ms=3)
    runs._succeed(second, {"output": 1, "units": {"requests": -2}}, tmp_path / "none", run_ms=3)
    with session_scope() as s:
        assert s.get(Request, canceled).status == "canceled"
        failed = s.get(Request, bad)
        assert failed.status == "failed" and failed.cost_micros == 0 and "could not be recorded" in failed.error
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 0


class _Replica:
    """Stands in for a replica: records the runs it was told to cancel."""

    def __init__(self) -> None:
        self.canceled: list[str] = []

    def cancel(self, request_id: str) -> None:
        self.canceled.append(request_id)


def _until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_watcher_thread_serves_every_running_request(committed: Engine, redis_client, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel event reaches its request's replica and no other; a cancel recorded only in the
    database (its event lost) is found by the watcher's periodic look."""
    monkeypatch.setattr(runs, "CANCEL_DB_CHECK_S", 0.5)
    watcher = runs.CancelWatcher()
    ids = [_submitted(tmp_path) for _ in range(3)]
    replicas = [_Replica() for _ in ids]
    before = set(threading.enumerate())
    for request_id, replica in zip(ids, replicas, strict=True):
        watcher.watch(request_id, replica)
    assert [t.name for t in set(threading.enumerate()) - before] == ["mediagate-cancels"]
    events.publish(ids[0], "cancel", {})
    _until(lambda: replicas[0].canceled == [ids[0]])
    with session_scope() as s:  # no event: only the database knows
        s.get(Request, ids[1]).cancel_requested = True
    _until(lambda: replicas[1].canceled == [ids[1]])
    watcher.unwatch(ids[2])
    events.publish(ids[2], "cancel", {})  # finished already: nothing to stop
    time.sleep(1.0)
    assert replicas[2].canceled == [] and replicas[0].canceled == [ids[0]]

"""Running one request on a replica of its deployment: what the Celery task does.

Three short transactions: claim (queued → running), run outside any transaction, finish
(outputs, moderation, usage, final status). Safe to run twice: a finished request is left
alone and usage is recorded once per request.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from billing import service as billing
from gateway import events, lifecycle
from gateway import repository as repo
from gateway.auth import account_limits
from gateway.config import get_gateway_settings
from gateway.models import FINAL_STATUSES, File, Request
from gateway.service import PRIORITIES, RUN_TASK
from kit.db import session_scope, utcnow
from kit.errors import AppError
from kit.settings import get_settings
from kit.storage import get_storage
from kit.tasks import enqueue, pool_queue
from moderation import service as moderation
from partners import logs as partner_logs
from partners import repository as partners_repo
from partners.models import Model
from partners.tenancy.deployments import replica_spec
from partners.tenancy.runner import (
    DeploymentSpec,
    ModelFailed,
    ReplicaError,
    ReplicaPool,
)

CANCEL_POLL_S = 0.5
CANCEL_DB_CHECK_S = 5.0


def _outputs_root() -> Path:
    """Where a worker keeps a request's output files between the sandbox and storage."""
    root = get_settings().data_dir / "outputs"
    root.mkdir(parents=True, exist_ok=True)
    return root


log = logging.getLogger(__name__)


@functools.cache
def replica_pool() -> ReplicaPool:
    """This worker process's warm replicas."""
    return ReplicaPool(setup_timeout=get_settings().runner_setup_timeout_s)


@dataclass(frozen=True)
class Claim:
    request_id: str
    account_id: str
    inputs: dict[str, Any]
    spec: DeploymentSpec
    queued_ms: int


def claim(session: Session, request_id: str) -> Claim | None:
    """Move a queued request to running; None when there is nothing (more) to do."""
    req = repo.request_for_update(session, request_id)
    if req is None or req.status in FINAL_STATUSES:
        return None
    now = utcnow()
    if req.status == "queued" and req.deadline_at is not None and now > req.deadline_at:
        req.status, req.completed_at = "expired", now
        req.error = "the request did not start before its Request-Timeout deadline"
        lifecycle.announce(session, req)
        return None
    if req.status == "queued" and not _under_concurrency_limit(session, req):
        # Over the account's limit: stays queued and is looked at again shortly, never dropped.
        enqueue(session, RUN_TASK, req.id, queue=pool_queue(req.pool),
                countdown=get_gateway_settings().requeue_delay_s, priority=PRIORITIES[req.priority])
        return None
    deployment = partners_repo.deployment(session, req.deployment_id)
    assert deployment is not None
    req.status, req.started_at = "running", req.started_at or now
    req.queue_ms = int((req.started_at - req.created_at).total_seconds() * 1000)
    req.attempts += 1
    lifecycle.announce(session, req)
    spec = replica_spec(session, deployment)
    queued_ms = int((now - req.created_at).total_seconds() * 1000)
    return Claim(req.id, req.account_id, dict(req.input), spec, queued_ms)


def _under_concurrency_limit(session: Session, req: Request) -> bool:
    repo.lock_account(session, req.account_id)  # two workers must not both take the last slot
    return repo.running_count(session, req.account_id) < account_limits(session, req.account_id).max_concurrency


def _cancel_requested(request_id: str) -> bool:
    with session_scope() as session:
        req = session.get(Request, request_id)
        return req is not None and req.cancel_requested


def _watch_cancel(request_id: str, replica: Any, stop: threading.Event) -> None:
    # The `cancel` event in the request's stream arrives at once; the database (the truth)
    # is looked at every few seconds in case that event was lost.
    if not get_settings().redis_url:
        while not stop.wait(CANCEL_POLL_S):
            if _cancel_requested(request_id):
                replica.cancel(request_id)
                return
        return
    after, last_db_check = "0", time.monotonic()
    while not stop.is_set():
        try:
            got = events.read_sync(request_id, after, block_ms=int(CANCEL_POLL_S * 1000))
        except Exception:  # noqa: BLE001 - Redis away: the database check below still runs
            got = []
            stop.wait(CANCEL_POLL_S)
        if got:
            after = got[-1][0]
        signaled = any(kind == "cancel" for _, kind, _ in got)
        if not signaled and time.monotonic() - last_db_check > CANCEL_DB_CHECK_S:
            last_db_check, signaled = time.monotonic(), _cancel_requested(request_id)
        if signaled and not stop.is_set():
            replica.cancel(request_id)
            return


def execute(request_id: str) -> None:
    """Run a request end to end (the body of the `gateway.run_request` task)."""
    with session_scope() as session:
        claimed = claim(session, request_id)
    if claimed is None:
        return
    settings = get_settings()
    pool = replica_pool()
    started = time.perf_counter()
    try:
        replica = pool.acquire(claimed.spec, timeout=settings.runner_setup_timeout_s)
    except ReplicaError as exc:
        # The partner's own traceback goes to the partner's logs, never to the customer.
        log.warning("deployment %s could not start a replica: %s\n%s", claimed.spec.deployment_id,
                    exc, exc.partner_detail or "")
        _fail(request_id, f"the model could not start: {exc}")
        return
    output_dir = Path(tempfile.mkdtemp(prefix=f"{request_id}-", dir=_outputs_root()))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_cancel, args=(request_id, replica, stop), daemon=True)
    watcher.start()
    broken = False

    def forward(event: dict[str, Any]) -> None:
        events.publish(request_id, event["type"], {k: v for k, v in event.items() if k not in ("type", "id")})
        if event["type"] == "log":  # the partner sees its model's request logs too
            partner_logs.log_line(claimed.spec.deployment_id, str(event.get("message", "")),
                                  replica_id=replica.replica_id, request_id=request_id)

    try:
        result = replica.predict(request_id, claimed.inputs, output_dir,
                                 timeout=settings.runner_predict_timeout_s, on_event=forward)
    except ModelFailed as exc:
        _fail(request_id, str(exc))
        return
    except ReplicaError as exc:
        broken = True
        _fail(request_id, str(exc))
        return
    finally:
        stop.set()
        pool.release(replica, broken=broken)
    run_ms = int((time.perf_counter() - started) * 1000)
    try:
        _succeed(request_id, result, output_dir, run_ms)
    except Exception:
        # Never leave the request `running`: it fails uncharged (the usage rolled back with it).
        log.exception("request %s could not be finished", request_id)
        _fail(request_id, "the result could not be recorded; nothing was charged")
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _fail(request_id: str, message: str) -> None:
    with session_scope() as session:
        req = repo.request_for_update(session, request_id)
        if req is None or req.status in FINAL_STATUSES:
            return
        canceled = req.cancel_requested
        req.status = "canceled" if canceled else "failed"
        req.error = None if canceled else message[:4000]
        req.completed_at = utcnow()
        lifecycle.announce(session, req)


def _store_outputs(session: Session, req: Request, value: Any, output_dir: Path) -> Any:
    if isinstance(value, dict) and "$file" in value:
        name = Path(str(value["$file"])).name
        source = output_dir / name
        key = f"outputs/{req.account_id}/{req.id}/{name}"
        size = get_storage().put_file(key, source)
        f = File(account_id=req.account_id, request_id=req.id, storage_key=key, file_name=name,
                 content_type=str(value.get("content_type", "application/octet-stream")), size=size)
        session.add(f)
        session.flush()
        extra = {k: v for k, v in value.items() if k not in ("$file", "content_type")}
        return {"$file_id": f.id, "file_name": name, "content_type": f.content_type, "file_size": size, **extra}
    if isinstance(value, dict):
        return {k: _store_outputs(session, req, v, output_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_store_outputs(session, req, v, output_dir) for v in value]
    return value


def _succeed(request_id: str, result: dict[str, Any], output_dir: Path, run_ms: int) -> None:
    with session_scope() as session:
        req = repo.request_for_update(session, request_id)
        if req is None or req.status in FINAL_STATUSES:
            return
        now = utcnow()
        if req.cancel_requested:
            req.status, req.completed_at = "canceled", now
            lifecycle.announce(session, req)
            return
        files = sorted(p for p in output_dir.glob("*") if p.is_file()) if output_dir.exists() else []
        verdict = moderation.check_output(session, account_id=req.account_id, model_id=req.model_id,
                                          request_id=req.id, files=files)
        req.moderation_output = verdict.decision
        req.run_ms = run_ms
        req.completed_at = now
        if verdict.blocked:
            req.status = "blocked"
            req.error = verdict.reason or "the output was blocked by content policy"
            lifecycle.announce(session, req)
            return
        for checked in verdict.files:  # blurred stand-ins take the originals' place
            if checked.action == "replace" and checked.replace_with is not None:
                os.replace(checked.replace_with, checked.path)
        model = session.get(Model, req.model_id)
        units = result.get("units") or {}
        try:
            with session.begin_nested():
                output = _store_outputs(session, req, result.get("output"), output_dir)
                usage = billing.record_usage(session, request_id=req.id, account_id=req.account_id,
                                             model=model, version_id=req.version_id, units=units,
                                             occurred_at=now)
        except AppError as exc:  # e.g. the model reported unusable units: fail, charge nothing
            req.status, req.error = "failed", f"the result could not be recorded: {exc.message}"
            lifecycle.announce(session, req)
            return
        req.output, req.units, req.cost_micros = output, units, usage.amount_micros
        req.status = "succeeded"
        lifecycle.announce(session, req)

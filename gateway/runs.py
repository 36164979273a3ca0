"""Running one request on a replica of its deployment: what the Celery task does.

Three short transactions: claim (queued → running), run outside any transaction, finish
(outputs, moderation, usage, final status). Safe to run twice: a finished request is left
alone and usage is recorded once per request.

Durable: the claim takes a lease (this worker, until when) that the process's lease keeper
renews while the model runs. A worker that dies stops renewing; the housekeeping tick then
queues the request again (`gateway.sweeps.recover_lapsed`). Each run is an attempt: only
the attempt that still holds the request may finish it, so a worker that comes back late
records nothing. A model process that dies mid-request is retried the same way, and past
`max_attempts` the request ends `failed`, uncharged.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from billing import service as billing
from gateway import events, lifecycle, run_queries
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
    attempt: int
    owner: str
    partner_id: str
    # What the input check recorded: the output check goes by the same options.
    input_options: dict[str, Any]
    minor_signal: bool


class LeaseKeeper:
    """This process's leases on the requests it runs, renewed together by one thread."""

    def __init__(self) -> None:
        self.owner = f"{socket.gethostname()[:80]}/{os.getpid()}/{secrets.token_hex(4)}"
        self._held: dict[tuple[str, int], Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, request_id: str, attempt: int, on_lost: Callable[[], None]) -> None:
        """Keep renewing this attempt's lease; `on_lost` runs if another worker took it over."""
        with self._lock:
            self._held[(request_id, attempt)] = on_lost
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mediagate-leases", daemon=True)
                self._thread.start()

    def release(self, request_id: str, attempt: int) -> None:
        with self._lock:
            self._held.pop((request_id, attempt), None)

    def _loop(self) -> None:
        while True:
            time.sleep(get_gateway_settings().lease_renew_s)
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - the database is away: the next round tries again
                log.warning("request leases could not be renewed", exc_info=True)

    def renew(self) -> None:
        """Extend every held lease; tell the attempts whose request was taken from them."""
        with self._lock:
            held = list(self._held)
        if not held:
            return
        until = utcnow() + dt.timedelta(seconds=get_gateway_settings().lease_s)
        with session_scope() as session:
            now_held = repo.renew_leases(session, self.owner, sorted({rid for rid, _ in held}), until)
        for key in held:
            status, attempts, owner = now_held.get(key[0], ("gone", 0, None))
            if (owner, attempts) == (self.owner, key[1]) and status in ("running", *FINAL_STATUSES):
                continue  # still ours, or just finished by this very attempt
            with self._lock:
                on_lost = self._held.pop(key, None)
            if on_lost is not None:
                log.warning("request %s attempt %d lost its lease (queued again or taken over); "
                            "its model is stopped", *key)
                on_lost()


_keepers: dict[int, LeaseKeeper] = {}


def lease_keeper() -> LeaseKeeper:
    """This process's lease keeper (a forked child gets its own)."""
    keeper = _keepers.get(os.getpid())
    if keeper is None:
        keeper = _keepers[os.getpid()] = LeaseKeeper()
    return keeper


def send_again(session: Session, req: Request, *, delay_s: float = 0.0) -> None:
    """Send the request's task again (after commit); if no worker takes it in time, the sweep resends."""
    settings = get_gateway_settings()
    req.lease_expires_at = utcnow() + dt.timedelta(seconds=delay_s + settings.requeue_stale_s)
    enqueue(session, RUN_TASK, req.id, queue=pool_queue(req.pool), priority=PRIORITIES[req.priority],
            **({"countdown": delay_s} if delay_s > 0 else {}))


def retry_or_fail(session: Session, req: Request, *, reason: str, delay_s: float = 0.0) -> None:
    """Queue a request that lost its run for another attempt; past `max_attempts`, fail it uncharged."""
    now = utcnow()
    if req.cancel_requested:
        req.status, req.completed_at, req.lease_expires_at = "canceled", now, None
    elif req.attempts >= get_gateway_settings().max_attempts:
        req.status, req.completed_at, req.lease_expires_at = "failed", now, None
        req.error = (f"{reason}; gave up after {req.attempts} attempts, nothing was charged")[:4000]
    else:
        log.warning("request %s goes back to the queue after attempt %d: %s", req.id, req.attempts, reason)
        req.status = "queued"
        send_again(session, req, delay_s=delay_s)
    lifecycle.announce(session, req)


def _take_back(session: Session, claimed: Claim) -> Request | None:
    """The request, locked, with its lease ended, while this attempt still owns it (nobody took
    it over, nobody finished it); None otherwise."""
    req = run_queries.request_to_finish(session, claimed.request_id, attempt=claimed.attempt, owner=claimed.owner)
    if req is None:
        now = session.get(Request, claimed.request_id)
        if now is not None and now.status not in FINAL_STATUSES:
            log.warning("request %s attempt %d lost its lease; its outcome is dropped",
                        claimed.request_id, claimed.attempt)
    return req


def claim(session: Session, request_id: str, *, owner: str) -> Claim | None:
    """Move a queued request to running under `owner`'s lease; None when there is nothing to do.

    A running request is taken over only when its lease lapsed (its worker is gone); while
    the lease holds, a duplicate or re-delivered message leaves it to its worker.
    """
    row = run_queries.request_to_claim(session, request_id)
    if row is None or row.request.status in FINAL_STATUSES:
        return None
    req = row.request
    now = utcnow()
    settings = get_gateway_settings()
    if req.status == "running":
        if req.lease_expires_at is not None and req.lease_expires_at > now:
            return None
        if req.attempts >= settings.max_attempts or req.cancel_requested:
            retry_or_fail(session, req, reason="the worker running it was lost")
            return None
    elif req.started_at is None and req.deadline_at is not None and now > req.deadline_at:
        req.status, req.completed_at, req.lease_expires_at = "expired", now, None
        req.error = "the request did not start before its Request-Timeout deadline"
        lifecycle.announce(session, req)
        return None
    elif not _under_concurrency_limit(session, req):
        # Over the account's limit: stays queued and is looked at again shortly, never dropped.
        send_again(session, req, delay_s=settings.requeue_delay_s)
        return None
    req.status, req.started_at = "running", req.started_at or now
    req.queue_ms = int((req.started_at - req.created_at).total_seconds() * 1000)
    req.attempts += 1
    req.lease_owner = owner
    req.lease_expires_at = now + dt.timedelta(seconds=settings.lease_s)
    lifecycle.announce(session, req)
    spec = replica_spec(session, row.deployment)  # its version and model are in the session already
    queued_ms = int((now - req.created_at).total_seconds() * 1000)
    return Claim(req.id, req.account_id, dict(req.input), spec, queued_ms, req.attempts, owner,
                 partner_id=row.partner_id, input_options=row.input_options, minor_signal=row.minor_signal)


def _under_concurrency_limit(session: Session, req: Request) -> bool:
    repo.lock_account(session, req.account_id)  # two workers must not both take the last slot
    return repo.running_count(session, req.account_id) < account_limits(session, req.account_id).max_concurrency


class CancelWatcher:
    """One thread per process that watches every request the process runs for a cancel.

    The `cancel` event in a request's stream arrives at once, for all watched requests in one
    blocking XREAD; the database (the truth) is asked every few seconds, for all of them in
    one query, in case an event was lost, and is the only source without Redis. A request
    that starts while the read waits joins the next one, which reads its stream from the
    start: a cancel sent in between is not missed, only seen up to `CANCEL_POLL_S` later.
    """

    def __init__(self) -> None:
        self._watched: dict[str, tuple[Any, str]] = {}  # request id → (its replica, last event id)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, request_id: str, replica: Any) -> None:
        """Cancel `replica`'s run of this request when the customer asks to."""
        with self._lock:
            self._watched[request_id] = (replica, "0")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="mediagate-cancels", daemon=True)
                self._thread.start()
        self._wake.set()

    def unwatch(self, request_id: str) -> None:
        with self._lock:
            self._watched.pop(request_id, None)

    def _loop(self) -> None:
        last_db_check = time.monotonic()
        while True:
            self._wake.wait()
            with self._lock:
                watched = {rid: after for rid, (_, after) in self._watched.items()}
                if not watched:
                    self._wake.clear()
                    continue
            try:
                signaled = self._read_events(watched) if get_settings().redis_url else set()
                if not get_settings().redis_url:
                    time.sleep(CANCEL_POLL_S)
                if not get_settings().redis_url or time.monotonic() - last_db_check > CANCEL_DB_CHECK_S:
                    last_db_check = time.monotonic()
                    with session_scope() as session:
                        signaled |= run_queries.cancel_requested_among(session, sorted(watched))
            except Exception:  # noqa: BLE001 - the database is away: the next round asks again
                log.warning("cancels could not be checked", exc_info=True)
                time.sleep(CANCEL_POLL_S)
                continue
            for request_id in signaled:
                with self._lock:
                    replica = self._watched.pop(request_id, (None, ""))[0]
                if replica is not None:
                    replica.cancel(request_id)

    def _read_events(self, watched: dict[str, str]) -> set[str]:
        try:
            reply = _cancel_redis().xread({events.stream_key(rid): after for rid, after in watched.items()},
                                          count=200, block=int(CANCEL_POLL_S * 1000))
        except events.REDIS_AWAY:  # the database check still runs
            time.sleep(CANCEL_POLL_S)
            return set()
        signaled = set()
        prefix = len(events.stream_key(""))
        for key, entries in reply or []:
            request_id = (key.decode() if isinstance(key, bytes) else key)[prefix:]
            got = events.decode(entries)
            with self._lock:
                if request_id in self._watched:
                    self._watched[request_id] = (self._watched[request_id][0], got[-1][0])
            if any(kind == "cancel" for _, kind, _ in got):
                signaled.add(request_id)
        return signaled


@functools.cache
def _cancel_redis() -> Any:
    import redis

    # Its own connection: the blocking read would otherwise hold one of the publishers'.
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=events.SOCKET_TIMEOUT_S,
                                socket_connect_timeout=events.CONNECT_TIMEOUT_S)


_watchers: dict[int, CancelWatcher] = {}


def cancel_watcher() -> CancelWatcher:
    """This process's cancel watcher (a forked child gets its own)."""
    watcher = _watchers.get(os.getpid())
    if watcher is None:
        watcher = _watchers[os.getpid()] = CancelWatcher()
    return watcher


# Where the cap is an address-space limit (no cgroup v2 memory controller), the model sees
# a MemoryError; under a cgroup cap the kernel kills the sandbox and the replica says so.
OUT_OF_MEMORY = ("the model ran out of memory: it tried to use more than its sandbox's memory cap "
                 "(the deployment's hardware.memory_gb)")


def execute(request_id: str) -> None:
    """Run a request end to end (the body of the `gateway.run_request` task)."""
    keeper = lease_keeper()
    with session_scope() as session:
        claimed = claim(session, request_id, owner=keeper.owner)
    if claimed is None:
        return
    running: dict[str, Any] = {}

    def lost() -> None:  # another worker took the request over: stop working on it
        replica = running.get("replica")
        if replica is not None:
            replica.cancel(request_id)

    keeper.hold(request_id, claimed.attempt, lost)
    try:
        _run(claimed, running)
    finally:
        keeper.release(request_id, claimed.attempt)


def _run(claimed: Claim, running: dict[str, Any]) -> None:
    request_id = claimed.request_id
    settings = get_settings()
    pool = replica_pool()
    started = time.perf_counter()
    try:
        replica = pool.acquire(claimed.spec, timeout=settings.runner_setup_timeout_s)
    except ReplicaError as exc:
        # The partner's own traceback goes to the partner's logs, never to the customer.
        log.warning("deployment %s could not start a replica: %s\n%s", claimed.spec.deployment_id,
                    exc, exc.partner_detail or "")
        _fail(claimed, f"the model could not start: {exc}")
        return
    running["replica"] = replica
    output_dir = Path(tempfile.mkdtemp(prefix=f"{request_id}-", dir=_outputs_root()))
    watcher = cancel_watcher()
    watcher.watch(request_id, replica)
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
        message = str(exc)
        _fail(claimed, OUT_OF_MEMORY if message.startswith("MemoryError") else message)
        return
    except ReplicaError as exc:
        broken = True
        out_of_memory = replica.sandbox.out_of_memory() or str(exc).startswith("the model ran out of memory")
        if isinstance(exc.__cause__, TimeoutError) or out_of_memory:
            _fail(claimed, str(exc))  # a hung model would hang again, a greedy one fill its cap again
        else:  # the model's process died: another replica may well succeed
            _retry(claimed, str(exc))
        return
    finally:
        running.pop("replica", None)
        watcher.unwatch(request_id)
        pool.release(replica, broken=broken)
    run_ms = int((time.perf_counter() - started) * 1000)
    try:
        _succeed(claimed, result, output_dir, run_ms)
    except Exception:
        # Never leave the request `running`: it fails uncharged (the usage rolled back with it).
        log.exception("request %s could not be finished", request_id)
        _fail(claimed, "the result could not be recorded; nothing was charged")
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _retry(claimed: Claim, message: str) -> None:
    with session_scope() as session:
        req = _take_back(session, claimed)
        if req is None:
            return
        retry_or_fail(session, req, reason=message, delay_s=get_gateway_settings().retry_delay_s)


def _fail(claimed: Claim, message: str) -> None:
    with session_scope() as session:
        req = _take_back(session, claimed)
        if req is None:
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


def _has_files(value: Any) -> bool:
    if isinstance(value, dict):
        return "$file" in value or any(_has_files(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_files(v) for v in value)
    return False


def _succeed(claimed: Claim, result: dict[str, Any], output_dir: Path, run_ms: int) -> None:
    with session_scope() as session:
        req = _take_back(session, claimed)
        if req is None:
            return
        now = utcnow()
        if req.cancel_requested:
            req.status, req.completed_at = "canceled", now
            lifecycle.announce(session, req)
            return
        files = sorted(p for p in output_dir.glob("*") if p.is_file()) if output_dir.exists() else []
        verdict = moderation.check_output(session, account_id=req.account_id, model_id=req.model_id,
                                          request_id=req.id, files=files,
                                          request_options=claimed.input_options,
                                          minor_signal=claimed.minor_signal)
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
        units = result.get("units") or {}
        item = billing.UsageItem(req.id, req.account_id, req.model_id, claimed.partner_id, req.version_id, units, now)
        value = result.get("output")
        try:
            # The charge raises before it writes anything; stored files are undone with it.
            with session.begin_nested() if _has_files(value) else nullcontext():
                usage = billing.charge_request(session, item)
                output = _store_outputs(session, req, value, output_dir)
        except AppError as exc:  # e.g. the model reported unusable units: fail, charge nothing
            req.status, req.error = "failed", f"the result could not be recorded: {exc.message}"
            lifecycle.announce(session, req)
            return
        req.output, req.units, req.cost_micros = output, units, usage.amount_micros
        req.status = "succeeded"
        lifecycle.announce(session, req)

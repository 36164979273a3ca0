"""Housekeeping: deadlines that pass in the queue, requests whose worker was lost, webhook
retries that come due, retention.

`tick()` runs every `sweep_interval_s` in each worker (one worker at a time does the work,
under a Redis lock), so a queued request whose `Request-Timeout` passes ends `expired` even
when no worker ever picks it up, and a request whose worker died runs again elsewhere
without waiting for the broker's visibility timeout.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from typing import Any

from sqlalchemy.engine import Connection

from gateway import lifecycle, recovery, runs, webhooks
from gateway import repository as repo
from gateway.config import get_gateway_settings
from kit.db import get_engine, hold_advisory_lock, session_scope, utcnow
from kit.settings import get_settings
from kit.storage import get_storage
from partners import logs as partner_logs
from partners import members as partner_members
from partners import orphans as partner_orphans
from partners import uploads as partner_uploads

log = logging.getLogger(__name__)
LOCK_KEY = "mediagate:sweep"
ADVISORY_LOCK_KEY = 0x6D67_7377  # PostgreSQL's lock for the same, while Redis is away
RETENTION_EVERY = 60  # ticks


def expire_overdue() -> int:
    """End queued requests whose start deadline passed: `expired`, never charged."""
    with session_scope() as session:
        now = utcnow()
        overdue = repo.overdue_queued(session, now)
        for req in overdue:
            req.status, req.completed_at = "expired", now
            req.error = "the request did not start before its Request-Timeout deadline"
            lifecycle.announce(session, req)
        return len(overdue)


def recover_lapsed() -> int:
    """Queue again the running requests whose lease lapsed, and resend queued ones nobody took.

    A lapsed lease means its worker died or lost the database: the request gets another
    attempt (or fails, uncharged, past `max_attempts`). A queued request still waiting past
    its resend time may have had its message held by a worker that died; a duplicate
    message is harmless, as a claimed request is never claimed twice.
    """
    settings = get_gateway_settings()
    with session_scope() as session:
        now = utcnow()
        lapsed = repo.lapsed_running(session, now, unleased_before=now - dt.timedelta(seconds=settings.lease_s))
        for req in lapsed:
            log.warning("request %s lost its worker %s (lease lapsed at %s)", req.id, req.lease_owner,
                        req.lease_expires_at)
            runs.retry_or_fail(session, req, reason="the worker running it was lost")
        stale = repo.stale_queued(session, now, created_before=now - dt.timedelta(seconds=settings.requeue_stale_s))
        for req in stale:
            runs.send_again(session, req)
        if stale:  # one line a round: a long backlog would otherwise flood the log
            log.warning("%d requests still queued past their resend time were sent again: %s%s", len(stale),
                        ", ".join(r.id for r in stale[:20]), ", …" if len(stale) > 20 else "")
        return len(lapsed) + len(stale)


def _purge(value: Any, gone: set[str]) -> Any:
    if isinstance(value, dict) and value.get("$file_id") in gone:
        return {**{k: v for k, v in value.items() if k != "$file_id"}, "expired": True}
    if isinstance(value, dict):
        return {k: _purge(v, gone) for k, v in value.items()}
    if isinstance(value, list):
        return [_purge(v, gone) for v in value]
    return value


def purge_expired_files(limit: int = 500) -> int:
    """Delete output files past their account's retention; their requests keep the metadata."""
    from gateway.models import Request

    default_days = get_gateway_settings().retention_days
    now = utcnow()
    deleted = 0
    with session_scope() as session:
        custom = repo.accounts_with_retention(session)
        batches = [repo.files_older_than(session, now - dt.timedelta(days=s.retention_days),
                                         account_id=s.account_id, limit=limit)
                   for s in custom if s.retention_days]
        if default_days:
            batches.append(repo.files_older_than(session, now - dt.timedelta(days=default_days),
                                                 exclude_accounts=[s.account_id for s in custom], limit=limit))
        by_request: dict[str, set[str]] = {}
        for f in (f for batch in batches for f in batch):
            get_storage().delete(f.storage_key)
            by_request.setdefault(f.request_id, set()).add(f.id)
            session.delete(f)
            deleted += 1
        session.flush()
        for request_id, gone in by_request.items():
            req = session.get(Request, request_id)
            if req is not None:
                req.output = _purge(req.output, gone)
    return deleted


def purge_partner_leftovers() -> None:
    """Abandoned upload sessions, stored objects nothing refers to, old deployment logs and
    expired portal sessions."""
    with session_scope() as session:
        partner_uploads.purge_expired(session)
        partner_orphans.purge_orphans(session)
        partner_logs.prune(session)
        partner_members.prune_sessions(session)


@functools.cache
def _redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().redis_url)


def _leader(interval_s: float) -> bool:
    # One worker per interval does the work; the others skip this tick.
    if not get_settings().redis_url:
        return True
    try:
        return bool(_redis().set(LOCK_KEY, "1", nx=True, px=max(1, int(interval_s * 900))))
    except Exception:  # noqa: BLE001 - Redis away: deadlines and lapsed leases still need a round
        return _database_leader()


_database_lock: Connection | None = None


def _database_leader() -> bool:
    """While Redis is away, the worker holding a PostgreSQL advisory lock does the rounds
    (the database releases it when that worker dies)."""
    global _database_lock
    if get_engine().dialect.name != "postgresql":
        return True  # the embedded database serves one worker
    try:
        if _database_lock is None:
            _database_lock = hold_advisory_lock(ADVISORY_LOCK_KEY)
        else:
            _database_lock.exec_driver_sql("SELECT 1")  # still ours: the connection is alive
    except Exception:  # noqa: BLE001 - the database is away too: nobody sweeps this round
        if _database_lock is not None:
            _database_lock.invalidate()
        _database_lock = None
    return _database_lock is not None


_ticks = 0


def tick() -> None:
    """One round of housekeeping (skipped when another worker has this round)."""
    global _ticks
    if not _leader(get_gateway_settings().sweep_interval_s):
        return
    _ticks += 1
    expire_overdue()
    recovery.resend_after_broker_loss()
    recover_lapsed()
    webhooks.send_due()
    if _ticks % RETENTION_EVERY == 1:
        purge_expired_files()
        purge_partner_leftovers()


def start_ticker() -> threading.Event:
    """Run `tick()` every `sweep_interval_s` in a daemon thread; set the event to stop it."""
    stop = threading.Event()
    interval = get_gateway_settings().sweep_interval_s

    def loop() -> None:
        while not stop.wait(interval):
            try:
                tick()
            except Exception:  # noqa: BLE001 - housekeeping must outlive a bad round
                log.exception("housekeeping round failed")

    threading.Thread(target=loop, name="mediagate-sweeps", daemon=True).start()
    return stop

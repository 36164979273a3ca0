"""SLA pools: where a request runs, and how well each pool keeps its latency target.

A pool is a named set of replicas: the workers consuming its Celery queue `pool.<name>`.
A deployment names the shared pool its model runs in; an account with a dedicated pool
(for one model or for all) has its requests routed there instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from gateway import repository as repo
from gateway.cache import cached, forget
from gateway.models import Pool
from kit.db import utcnow
from kit.errors import Conflict, InvalidInput, NotFound

DEFAULT_P95_QUEUE_MS = 2000


def route(session: Session, *, account_id: str, model_id: str, default_pool: str) -> str:
    """The pool an account's request for a model runs in."""
    def load() -> str:
        pool = repo.dedicated_pool(session, account_id, model_id)
        return pool.name if pool is not None else default_pool

    return cached("route", f"{account_id}:{model_id}:{default_pool}", load)


def create_pool(session: Session, *, name: str, kind: str, p95_queue_ms_target: int,
                account_id: str | None = None, model_id: str | None = None) -> Pool:
    """A new pool; a dedicated one belongs to an account (optionally for one model)."""
    if kind not in ("shared", "dedicated"):
        raise InvalidInput("kind must be 'shared' or 'dedicated'", field="kind")
    if kind == "dedicated" and account_id is None:
        raise InvalidInput("a dedicated pool needs an account_id", field="account_id")
    if kind == "shared" and (account_id or model_id):
        raise InvalidInput("a shared pool belongs to no account", field="account_id")
    if repo.pool_by_name(session, name) is not None:
        raise Conflict(f"a pool named {name!r} exists")
    pool = Pool(name=name, kind=kind, account_id=account_id, model_id=model_id,
                p95_queue_ms_target=p95_queue_ms_target)
    session.add(pool)
    session.flush()
    forget("route")
    return pool


def visible_pool(session: Session, name: str, account_id: str) -> Pool:
    """A pool the account may look at: shared ones and its own; a pool without a row is shared."""
    pool = repo.pool_by_name(session, name)
    if pool is None:
        if repo.queued_count(session, name) == 0 and not repo.pool_timings(
                session, name, utcnow() - dt.timedelta(days=1))["started"]:
            raise NotFound(f"no pool {name}")
        return Pool(name=name, kind="shared", p95_queue_ms_target=DEFAULT_P95_QUEUE_MS)
    if pool.kind == "dedicated" and pool.account_id != account_id:
        raise NotFound(f"no pool {name}")
    return pool


def stats(session: Session, pool: Pool, *, window_s: int) -> dict[str, Any]:
    """p50/p95 queue wait and run time over the window, and the pool's SLA compliance."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window_s)
    t = repo.pool_timings(session, pool.name, since)
    within = repo.queue_within(session, pool.name, since, pool.p95_queue_ms_target) if t["started"] else 0

    def ms(value: Any) -> float | None:
        return None if value is None else round(float(value), 1)

    p95 = ms(t["queue_p95"])
    return {
        "pool": pool.name, "kind": pool.kind, "window_s": window_s, "since": since, "until": now,
        "queued": repo.queued_count(session, pool.name), "started": t["started"], "completed": t["ran"],
        "queue_ms": {"p50": ms(t["queue_p50"]), "p95": p95},
        "run_ms": {"p50": ms(t["run_p50"]), "p95": ms(t["run_p95"])},
        "sla": {"p95_queue_ms_target": pool.p95_queue_ms_target,
                "compliant": None if p95 is None else p95 <= pool.p95_queue_ms_target,
                "within_target_ratio": None if not t["started"] else round(within / t["started"], 4)},
    }

"""All SQL of the gateway domain."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from gateway.models import (
    AccountSettings,
    ApiKey,
    File,
    Pool,
    Request,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from moderation import repository as moderation_repo
from moderation.models import ModerationRecord

# -- keys and requests ---------------------------------------------------------------------


def key_by_digest(session: Session, digest: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.digest == digest, ApiKey.revoked_at.is_(None)))


def request_of_account(session: Session, request_id: str, account_id: str) -> Request | None:
    return session.scalar(select(Request).where(Request.id == request_id, Request.account_id == account_id))


def request_for_update(session: Session, request_id: str) -> Request | None:
    return session.scalar(select(Request).where(Request.id == request_id).with_for_update())


def request_by_idempotency_key(session: Session, account_id: str, key: str) -> Request | None:
    return session.scalar(
        select(Request).where(Request.account_id == account_id, Request.idempotency_key == key)
    )


# -- the submit path: one statement writes the request and counts the queue ahead of it ------


def insert_request(session: Session, req: Request, *,
                   record: dict[str, Any] | None = None) -> tuple[bool, int | None]:
    """Write a new request and, when given, its input check's record (see `moderation.service.
    check_input`'s `defer_record`); returns (written, its queue position). Not written: the
    account already has a request with this Idempotency-Key (a concurrent duplicate waits for
    the first to commit, then finds it), and then neither is the record.

    On PostgreSQL this is one round trip outside the unit of work: the INSERT, skipping a
    duplicate key, the record's INSERT for the row written, and the count of queued requests
    ahead, in one statement. The object joins the session as if it had been loaded.
    Elsewhere it is the ORM's flush in a savepoint, and the position is left to
    `queue_position` (None).
    """
    if session.get_bind().dialect.name != "postgresql":
        written = _insert_with_flush(session, req)
        if written and record is not None:
            moderation_repo.insert_record(session, record)
        return written, None
    row = _complete(_REQUESTS, {_REQUEST_COLUMNS[k]: v for k, v in req.__dict__.items() if k in _REQUEST_COLUMNS})
    params = {**row, "ahead_pool": req.pool, "ahead_created_at": req.created_at}
    record_columns: tuple[str, ...] = ()
    if record is not None:
        completed = _complete(_RECORDS, record)
        record_columns = tuple(sorted(completed))
        params.update({f"mod_{k}": v for k, v in completed.items()})
    statement = _insert_counting(tuple(sorted(row)), record_columns, low=req.priority == "low")
    found = session.connection().execute(statement, params).first()
    if found is None:
        return False, None
    for column in _REQUESTS.columns:
        if column.name in row or column.server_default is None:
            setattr(req, _REQUEST_ATTRS[column.name], row.get(column.name))
    make_transient_to_detached(req)  # what it was not given (a server default) loads on first use
    session.add(req)
    return True, int(found[1])


# -- inside a group commit: the batch's plain submits written together ----------------------


class PendingInsert:
    """A request waiting for its group commit's write, and the queue position it gets there."""

    def __init__(self, req: Request, record: dict[str, Any] | None) -> None:
        self.req, self.record = req, record
        self.position: int | None = None


def defer_inserts(session: Session) -> None:
    """From now on `defer_insert` collects into `session` until `write_deferred` (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.info["deferred_requests"] = []


def defer_insert(session: Session, req: Request, *, record: dict[str, Any] | None) -> PendingInsert | None:
    """Collect a request (and its check record) for the batch's write; None when this session
    does not defer. Only for requests no other statement refers to before the write: no
    Idempotency-Key to race on, nothing else written about them yet."""
    pending = session.info.get("deferred_requests")
    if pending is None:
        return None
    entry = PendingInsert(req, record)
    pending.append(entry)
    return entry


def write_deferred(session: Session) -> None:
    """Write the collected requests and records in one multi-row INSERT each, and give each its
    queue position: the queued requests of its pool counted once, before the write, plus those
    of the batch ahead of it."""
    pending: list[PendingInsert] = session.info.get("deferred_requests") or []
    if not pending:
        return
    session.info["deferred_requests"] = []
    conn = session.connection()
    pools = sorted({p.req.pool for p in pending})
    queued = {pool: [normal, other] for pool, normal, other in conn.execute(
        select(Request.pool, func.count().filter(Request.priority == "normal"),
               func.count().filter(Request.priority != "normal"))
        .where(Request.status == "queued", Request.pool.in_(pools)).group_by(Request.pool))}
    rows = [_full_row(_REQUESTS, {_REQUEST_COLUMNS[k]: v for k, v in p.req.__dict__.items() if k in _REQUEST_COLUMNS})
            for p in pending]
    conn.execute(_REQUESTS.insert(), rows)
    records = [_full_row(_RECORDS, p.record) for p in pending if p.record is not None]
    if records:
        conn.execute(_RECORDS.insert(), records)
    for entry in sorted(pending, key=lambda e: e.req.priority != "normal"):  # normal ones go first
        counts = queued.setdefault(entry.req.pool, [0, 0])
        normal = entry.req.priority == "normal"
        entry.position = counts[0] if normal else counts[0] + counts[1]
        counts[0 if normal else 1] += 1
    for entry, row in zip(pending, rows, strict=True):
        for column in _REQUESTS.columns:
            setattr(entry.req, _REQUEST_ATTRS[column.name], row[column.name])
        make_transient_to_detached(entry.req)
        session.add(entry.req)


def _full_row(table: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Every column's value, NULLs included, so all rows of a multi-row INSERT have the same keys."""
    row = _complete(table, given)
    return {column.name: row.get(column.name) for column in table.columns}


def _insert_with_flush(session: Session, req: Request) -> bool:
    if req.idempotency_key is None:
        session.add(req)
        session.flush()
        return True
    try:
        with session.begin_nested():  # a lost race leaves nothing pending in the outer transaction
            session.add(req)
            session.flush()
    except IntegrityError:
        return False
    return True


_REQUESTS = Request.__table__
_RECORDS = ModerationRecord.__table__
_REQUEST_ATTRS = {prop.columns[0].name: prop.key for prop in Request.__mapper__.column_attrs}
_REQUEST_COLUMNS = {attr: column for column, attr in _REQUEST_ATTRS.items()}


def _complete(table: Any, given: dict[str, Any]) -> dict[str, Any]:
    """Every column's value: the one given, else the column's Python default. NULLs are left
    out (so are columns with only a server default): fewer parameters keep the statement
    within what psycopg caches its parsing for (50)."""
    row: dict[str, Any] = {}
    for column in table.columns:
        if column.name in given:
            value = given[column.name]
        elif column.default is not None and column.default.is_scalar:
            value = column.default.arg
        elif column.default is not None and column.default.is_callable:
            value = column.default.arg(None)
        else:
            continue
        if value is not None or column.server_default is not None:
            row[column.name] = value
    return row


@functools.lru_cache(maxsize=256)  # one statement per set of columns given
def _insert_counting(columns: tuple[str, ...], record_columns: tuple[str, ...], *, low: bool) -> Any:
    inserted = (
        pg_insert(_REQUESTS).values({c: bindparam(c, type_=_REQUESTS.c[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=[_REQUESTS.c.account_id, _REQUESTS.c.idempotency_key])
        .returning(_REQUESTS.c.id).cte("inserted")
    )
    # As `queue_position`, from the partial index of queued rows; the new row is not counted
    # (a statement does not see its own writes).
    earlier = _REQUESTS.c.created_at < bindparam("ahead_created_at", type_=_REQUESTS.c.created_at.type)
    normal = _REQUESTS.c.priority == "normal"
    ahead = select(func.count()).select_from(_REQUESTS).where(
        _REQUESTS.c.status == "queued", _REQUESTS.c.pool == bindparam("ahead_pool"),
        or_(normal, earlier) if low else and_(normal, earlier))
    statement = select(inserted.c.id, ahead.scalar_subquery())
    if record_columns:
        recorded = moderation_repo.insert_record_per_row(inserted, record_columns).cte("recorded")
        statement = statement.add_cte(recorded)
    return statement


def queue_position(session: Session, req: Request) -> int:
    """How many queued requests of the same pool will start before this one.

    Normal priority goes first, then low; within a priority, first come first served.
    """
    ahead = Request.created_at < req.created_at
    if req.priority == "low":
        ahead = or_(Request.priority == "normal", ahead)
    else:
        ahead = and_(Request.priority == "normal", ahead)
    return session.scalar(
        select(func.count()).select_from(Request)
        .where(Request.status == "queued", Request.pool == req.pool, ahead)
    ) or 0


def running_count(session: Session, account_id: str) -> int:
    """How many of the account's requests are running now."""
    return session.scalar(
        select(func.count()).select_from(Request)
        .where(Request.account_id == account_id, Request.status == "running")
    ) or 0


def lock_account(session: Session, account_id: str) -> None:
    """Serialise concurrency decisions for one account until the transaction ends (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:id))"), {"id": account_id})


def overdue_queued(session: Session, now: dt.datetime, limit: int = 500) -> list[Request]:
    """Queued requests whose start deadline has passed, locked (others' locks are skipped).

    A request queued again after it started is past that deadline by design: left out.
    """
    return list(session.scalars(
        select(Request).where(Request.status == "queued", Request.deadline_at < now,
                              Request.started_at.is_(None))
        .order_by(Request.deadline_at).limit(limit).with_for_update(skip_locked=True)
    ))


# -- leases ----------------------------------------------------------------------------------


def renew_leases(session: Session, owner: str, request_ids: list[str],
                 until: dt.datetime) -> dict[str, tuple[str, int, str | None]]:
    """Extend the owner's leases on these of its running requests; each request's (status,
    attempts, lease owner) afterwards, to tell which it still holds."""
    if not request_ids:
        return {}
    session.execute(update(Request).where(Request.id.in_(request_ids), Request.status == "running",
                                          Request.lease_owner == owner)
                    .values(lease_expires_at=until).execution_options(synchronize_session=False))
    rows = session.execute(select(Request.id, Request.status, Request.attempts, Request.lease_owner)
                           .where(Request.id.in_(request_ids)))
    return {rid: (status, attempts, lease_owner) for rid, status, attempts, lease_owner in rows}


def lapsed_running(session: Session, now: dt.datetime, *, unleased_before: dt.datetime,
                   limit: int = 200) -> list[Request]:
    """Running requests whose worker stopped renewing its lease, locked (others' locks skipped).

    Rows that never had a lease (started before leases existed) count once they ran longer
    than a lease.
    """
    lapsed = or_(Request.lease_expires_at < now,
                 and_(Request.lease_expires_at.is_(None), Request.started_at < unleased_before))
    return list(session.scalars(
        select(Request).where(Request.status == "running", lapsed)
        .order_by(Request.lease_expires_at).limit(limit).with_for_update(skip_locked=True)
    ))


def stale_queued(session: Session, now: dt.datetime, *, created_before: dt.datetime,
                 limit: int = 200) -> list[Request]:
    """Queued requests no worker picked up in time (their message may be lost), locked."""
    stale = or_(Request.lease_expires_at < now,
                and_(Request.lease_expires_at.is_(None), Request.created_at < created_before))
    return list(session.scalars(
        select(Request).where(Request.status == "queued", stale)
        .order_by(Request.created_at).limit(limit).with_for_update(skip_locked=True)
    ))


def files_of_request(session: Session, request_id: str) -> list[File]:
    return list(session.scalars(select(File).where(File.request_id == request_id).order_by(File.id)))


def file_of_account(session: Session, file_id: str, account_id: str) -> File | None:
    return session.scalar(select(File).where(File.id == file_id, File.account_id == account_id))


def file(session: Session, file_id: str) -> File | None:
    return session.get(File, file_id)


def files_older_than(session: Session, cutoff: dt.datetime, *, account_id: str | None = None,
                     exclude_accounts: list[str] | None = None, limit: int = 500) -> list[File]:
    """Output files created before `cutoff`, of one account or of all but some."""
    query = select(File).where(File.created_at < cutoff)
    if account_id is not None:
        query = query.where(File.account_id == account_id)
    if exclude_accounts:
        query = query.where(File.account_id.not_in(exclude_accounts))
    return list(session.scalars(query.order_by(File.created_at).limit(limit)))


# -- account settings and pools ------------------------------------------------------------


def account_settings(session: Session, account_id: str) -> AccountSettings | None:
    return session.get(AccountSettings, account_id)


def accounts_with_retention(session: Session) -> list[AccountSettings]:
    return list(session.scalars(select(AccountSettings).where(AccountSettings.retention_days.is_not(None))))


def pool_by_name(session: Session, name: str) -> Pool | None:
    return session.scalar(select(Pool).where(Pool.name == name))


def all_pools(session: Session) -> list[Pool]:
    return list(session.scalars(select(Pool).order_by(Pool.name)))


def dedicated_pool(session: Session, account_id: str, model_id: str) -> Pool | None:
    """The account's dedicated pool for a model: one named for the model wins over a catch-all."""
    return session.scalar(
        select(Pool).where(Pool.kind == "dedicated", Pool.account_id == account_id,
                           or_(Pool.model_id == model_id, Pool.model_id.is_(None)))
        .order_by(Pool.model_id.is_(None), Pool.name).limit(1)
    )


def pool_timings(session: Session, pool: str, since: dt.datetime) -> dict[str, Any]:
    """Queue wait and run time percentiles of a pool's requests started since a time."""
    started = and_(Request.pool == pool, Request.started_at >= since, Request.queue_ms.is_not(None))
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(select(
            func.count(),
            func.percentile_cont(0.5).within_group(Request.queue_ms),
            func.percentile_cont(0.95).within_group(Request.queue_ms),
        ).where(started)).one()
        run = session.execute(select(
            func.count(),
            func.percentile_cont(0.5).within_group(Request.run_ms),
            func.percentile_cont(0.95).within_group(Request.run_ms),
        ).where(started, Request.run_ms.is_not(None))).one()
        return {"started": row[0], "queue_p50": row[1], "queue_p95": row[2],
                "ran": run[0], "run_p50": run[1], "run_p95": run[2]}
    queue = sorted(session.scalars(select(Request.queue_ms).where(started)))
    runs = sorted(v for v in session.scalars(select(Request.run_ms).where(started)) if v is not None)
    return {"started": len(queue), "queue_p50": _pct(queue, 0.5), "queue_p95": _pct(queue, 0.95),
            "ran": len(runs), "run_p50": _pct(runs, 0.5), "run_p95": _pct(runs, 0.95)}


def _pct(values: list[int], q: float) -> float | None:
    # Linear interpolation, as PostgreSQL's percentile_cont.
    if not values:
        return None
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def queue_within(session: Session, pool: str, since: dt.datetime, target_ms: int) -> int:
    """How many of the pool's requests started since a time waited at most `target_ms`."""
    return session.scalar(select(func.count()).select_from(Request).where(
        Request.pool == pool, Request.started_at >= since, Request.queue_ms <= target_ms)) or 0


def queued_count(session: Session, pool: str) -> int:
    return session.scalar(select(func.count()).select_from(Request)
                          .where(Request.status == "queued", Request.pool == pool)) or 0


def running_in_pool(session: Session, pool: str) -> int:
    """How many of a pool's requests are running now (what its autoscaler counts as busy)."""
    return session.scalar(select(func.count()).select_from(Request)
                          .where(Request.status == "running", Request.pool == pool)) or 0


# -- webhooks ------------------------------------------------------------------------------


def endpoints_of(session: Session, account_id: str) -> list[WebhookEndpoint]:
    return list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
                                .order_by(WebhookEndpoint.id)))


def endpoint_of_account(session: Session, endpoint_id: str, account_id: str) -> WebhookEndpoint | None:
    return session.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                        WebhookEndpoint.account_id == account_id))


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    """Remove an endpoint; its past deliveries stay, no longer linked to it."""
    session.execute(update(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
                    .values(endpoint_id=None))
    session.delete(endpoint)
    session.flush()


def insert_delivery_if_new(session: Session, values: dict[str, Any]) -> bool:
    """Add a delivery unless one exists for the same request, URL and event; True if added."""
    if session.get_bind().dialect.name == "postgresql":
        result = session.execute(pg_insert(WebhookDelivery).values(**values)
                                 .on_conflict_do_nothing().returning(WebhookDelivery.id))
        return result.first() is not None
    exists = session.scalar(select(WebhookDelivery.id).where(
        WebhookDelivery.request_id == values["request_id"], WebhookDelivery.url == values["url"],
        WebhookDelivery.event == values["event"]))
    if exists:
        return False
    session.add(WebhookDelivery(**values))
    session.flush()
    return True


def delivery_for_update(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update())


def due_deliveries(session: Session, now: dt.datetime, limit: int = 200) -> list[str]:
    """Pending deliveries whose next attempt is due."""
    return list(session.scalars(
        select(WebhookDelivery.id).where(WebhookDelivery.status == "pending",
                                         WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ))


def touch_deliveries(session: Session, delivery_ids: list[str], when: dt.datetime) -> None:
    if delivery_ids:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids))
                        .values(next_attempt_at=when))


def deliveries_of_request(session: Session, request_id: str) -> list[WebhookDelivery]:
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.request_id == request_id)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)))


def attempts_of(session: Session, delivery_ids: list[str]) -> list[WebhookAttempt]:
    if not delivery_ids:
        return []
    return list(session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))
                                .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)))


def queued_after(session: Session, after: tuple[Any, str] | None, limit: int) -> list[Request]:
    """Queued requests past (created_at, id) `after`, oldest first, locked (others skipped)."""
    query = select(Request).where(Request.status == "queued")
    if after is not None:
        query = query.where(tuple_(Request.created_at, Request.id) > after)
    return list(session.scalars(query.order_by(Request.created_at, Request.id).limit(limit)
                                .with_for_update(skip_locked=True)))

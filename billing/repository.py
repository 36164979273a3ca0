"""All SQL of billing's core: pricing look-ups, usage, counters, the ledger and periods."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Json
from sqlalchemy import column, func, insert, literal, select, table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from billing import ledger
from billing.models import (
    Account,
    BillingPeriod,
    CreditBalance,
    LedgerEntry,
    Payee,
    Refund,
    UsageCounter,
    UsageRecord,
)
from kit.db import utcnow
from partners.models import Model, Partner

# The gateway's requests table, read by name: billing may not import the gateway's modules.
requests_table = table(
    "requests", column("id"), column("account_id"), column("model_id"), column("pool"),
    column("status"), column("created_at"), column("started_at"), column("completed_at"),
    column("run_ms"),
)


def _insert(session: Session, model: Any) -> Any:
    """A dialect insert that knows ON CONFLICT (PostgreSQL and SQLite)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"billing needs PostgreSQL or SQLite, not {dialect}")  # pragma: no cover


def account(session: Session, account_id: str) -> Account | None:
    """An account by id."""
    return session.get(Account, account_id)


USAGE_COLUMNS = [c.name for c in UsageRecord.__table__.columns]
LEDGER_COLUMNS = [c.name for c in LedgerEntry.__table__.columns]


_COPY_TYPES: dict[str, list[int]] = {}


def _copy_rows(cursor: Any, table_name: str, columns: list[str], rows: list[dict[str, Any]],
               json_columns: tuple[str, ...] = ()) -> None:
    """COPY rows in PostgreSQL's binary format (no text formatting or parsing per value)."""
    cols = ", ".join(columns)
    key = f"{table_name}({cols})"
    if key not in _COPY_TYPES:
        cursor.execute(f"SELECT {cols} FROM {table_name} LIMIT 0")
        _COPY_TYPES[key] = [d.type_code for d in cursor.description]
    json_at = [columns.index(c) for c in json_columns]
    with cursor.copy(f"COPY {table_name} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES[key])
        for row in rows:
            values = [row[c] for c in columns]
            for i in json_at:
                values[i] = Json(values[i])
            copy.write_row(values)


def insert_usages(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Many usage rows at once, duplicates skipped; the ids that were written.

    On PostgreSQL the rows are COPied straight in (bulk ingestion's fast path); if a
    concurrent writer charged one of them first, they go through a temporary table and one
    INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING instead.
    """
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql" and len(rows) > 50:
        raw = session.connection().connection.dbapi_connection
        try:
            # The caller skipped requests already charged, so a conflict here means a
            # concurrent writer won a race: then the slower path below sorts it out.
            with session.begin_nested(), raw.cursor() as cur:  # type: ignore[union-attr]
                _copy_rows(cur, "usage_records", USAGE_COLUMNS, rows, json_columns=("units",))
            return {r["id"] for r in rows}
        except psycopg.errors.UniqueViolation:
            pass
        cols = ", ".join(USAGE_COLUMNS)
        with raw.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS usage_stage "
                        "(LIKE usage_records INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            _copy_rows(cur, "usage_stage", USAGE_COLUMNS, rows, json_columns=("units",))
            cur.execute(f"INSERT INTO usage_records ({cols}) SELECT {cols} FROM usage_stage "
                        "ON CONFLICT (request_id, meter) DO NOTHING RETURNING id")
            written = {r[0] for r in cur.fetchall()}
            cur.execute("DELETE FROM usage_stage")
        return written
    written: set[str] = set()
    stmt = _insert(session, UsageRecord).on_conflict_do_nothing(
        index_elements=["request_id", "meter"]).returning(UsageRecord.id)
    for row in rows:
        if session.execute(stmt.values(**row)).scalar() is not None:
            written.add(row["id"])
    return written


def usage_of_request(session: Session, request_id: str) -> list[UsageRecord]:
    """A request's usage records."""
    return list(session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)))


def usage_for_update(session: Session, usage_id: str) -> UsageRecord | None:
    """A usage record, locked (refunds of one charge queue up)."""
    return session.scalar(select(UsageRecord).where(UsageRecord.id == usage_id).with_for_update())


def refunded_total(session: Session, usage_id: str) -> int:
    """How much of a charge was refunded so far."""
    return int(session.scalar(select(func.coalesce(func.sum(Refund.amount_micros), 0))
                              .where(Refund.usage_id == usage_id)) or 0)


def customer_leg(session: Session, transaction_id: str) -> str | None:
    """The customer ledger account a transaction charged."""
    return session.scalar(select(LedgerEntry.ledger_account).where(
        LedgerEntry.transaction_id == transaction_id, LedgerEntry.ledger_account.startswith("customer:"))
        .limit(1))


def entries_of(session: Session, transaction_id: str) -> list[LedgerEntry]:
    """A transaction's legs."""
    return list(session.scalars(select(LedgerEntry).where(LedgerEntry.transaction_id == transaction_id)
                                .order_by(LedgerEntry.id)))


def has_transaction(session: Session, *, kind: str, ref: str) -> bool:
    """Whether a transaction of this kind was already posted for `ref` (idempotent posting)."""
    return session.scalar(select(LedgerEntry.id).where(LedgerEntry.kind == kind, LedgerEntry.ref == ref)
                          .limit(1)) is not None


def add_entries(session: Session, entries: list[dict[str, Any]]) -> None:
    """Append ledger legs, and move prepaid credit balances with the legs that touch them."""
    if not entries:
        return
    if session.get_bind().dialect.name == "postgresql" and len(entries) > 50:
        with session.connection().connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
            _copy_rows(cur, "ledger_entries", LEDGER_COLUMNS, entries)
    else:
        session.connection().execute(insert(LedgerEntry), entries)
    moves: dict[tuple[str, str], int] = defaultdict(int)
    for e in entries:
        holder = ledger.credit_account_holder(e["ledger_account"])
        if holder is not None:
            moves[(holder, e["currency"])] -= e["amount_micros"]
    if moves:
        now = utcnow()
        # Sorted, so concurrent batches lock balance rows in the same order.
        rows = sorted(moves.items())
        if session.get_bind().dialect.name == "postgresql":
            with session.connection().connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
                cur.execute(
                    "INSERT INTO credit_balances (account_id, currency, balance_micros, updated_at) "
                    "SELECT a, c, m, %s FROM unnest(%s::varchar[], %s::varchar[], %s::bigint[]) AS t(a, c, m) "
                    "ON CONFLICT (account_id) DO UPDATE SET balance_micros = credit_balances.balance_micros "
                    "+ excluded.balance_micros, updated_at = excluded.updated_at",
                    [now, [a for (a, _), _ in rows], [c for (_, c), _ in rows], [m for _, m in rows]])
            return
        stmt = _insert(session, CreditBalance)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id"],
            set_={"balance_micros": CreditBalance.balance_micros + stmt.excluded.balance_micros,
                  "updated_at": stmt.excluded.updated_at})
        session.execute(stmt, [{"account_id": a, "currency": c, "balance_micros": m, "updated_at": now}
                               for (a, c), m in rows])


def credit_balance(session: Session, account_id: str) -> int:
    """A prepaid account's stored credit."""
    return int(session.scalar(select(CreditBalance.balance_micros)
                              .where(CreditBalance.account_id == account_id)) or 0)


def bump_counters(session: Session, bumps: list[tuple[str, str, str, Decimal]]) -> dict[tuple[str, str, str], Decimal]:
    """Add to running counters in one statement (locking their rows); each counter's new total.

    Rows are sorted, so concurrent batches lock shared counters in the same order.
    """
    if not bumps:
        return {}
    rows = sorted(bumps)
    if session.get_bind().dialect.name == "postgresql":
        # One fixed statement over arrays: a multi-row VALUES would be compiled afresh each time.
        with session.connection().connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(
                "INSERT INTO usage_counters (scope, key, period, quantity) "
                "SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::numeric[]) "
                "ON CONFLICT (scope, key, period) DO UPDATE SET quantity = usage_counters.quantity + "
                "excluded.quantity RETURNING scope, key, period, quantity",
                [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]])
            return {(sc, k, p): Decimal(q) for sc, k, p, q in cur.fetchall()}
    stmt = _insert(session, UsageCounter).values(
        [{"scope": sc, "key": k, "period": p, "quantity": q} for sc, k, p, q in rows])
    stmt = stmt.on_conflict_do_update(
        index_elements=["scope", "key", "period"],
        set_={"quantity": UsageCounter.quantity + stmt.excluded.quantity},
    ).returning(UsageCounter.scope, UsageCounter.key, UsageCounter.period, UsageCounter.quantity)
    return {(sc, k, p): Decimal(q) for sc, k, p, q in session.connection().execute(stmt)}


# -- periods ---------------------------------------------------------------------------

def latest_closed_period(session: Session) -> str | None:
    """The last frozen period (closing or closed): nothing more is booked into it."""
    return session.scalar(select(func.max(BillingPeriod.period))
                          .where(BillingPeriod.status.in_(("closing", "closed"))))


def lock_period_shared(session: Session, period: str) -> str:
    """The period's status under a share lock, creating it open: close waits for us."""
    status = session.scalar(select(BillingPeriod.status).where(BillingPeriod.period == period)
                            .with_for_update(read=True))
    if status is None:
        session.execute(_insert(session, BillingPeriod).values(period=period, status="open", totals={})
                        .on_conflict_do_nothing(index_elements=["period"]))
        status = session.scalar(select(BillingPeriod.status).where(BillingPeriod.period == period)
                                .with_for_update(read=True))
    return status or "open"


def lock_period(session: Session, period: str) -> BillingPeriod:
    """The period row, created if missing, locked for the close."""
    session.execute(_insert(session, BillingPeriod).values(period=period, status="open", totals={})
                    .on_conflict_do_nothing(index_elements=["period"]))
    return session.scalars(select(BillingPeriod).where(BillingPeriod.period == period)
                           .with_for_update().execution_options(populate_existing=True)).one()


def periods(session: Session) -> list[BillingPeriod]:
    """Every billing period, oldest first."""
    return list(session.scalars(select(BillingPeriod).order_by(BillingPeriod.period)))


def unclosed_periods_before(session: Session, period: str) -> list[str]:
    """Earlier periods something was booked in that are not closed yet (close goes in order)."""
    return list(session.scalars(select(BillingPeriod.period).where(
        BillingPeriod.period < period, BillingPeriod.status != "closed").order_by(BillingPeriod.period)))


# -- ledger reads ----------------------------------------------------------------------

def unbalanced_transactions(session: Session) -> list[str]:
    """Transactions whose legs do not sum to zero (none, in healthy books)."""
    return list(session.scalars(select(LedgerEntry.transaction_id).group_by(LedgerEntry.transaction_id)
                                .having(func.sum(LedgerEntry.amount_micros) != 0)))


def balances(session: Session, prefix: str = "", *, through: str | None = None) -> dict[str, int]:
    """Ledger balances by account (optionally only periods up to `through`)."""
    query = (select(LedgerEntry.ledger_account, func.sum(LedgerEntry.amount_micros))
             .where(LedgerEntry.ledger_account.startswith(prefix)))
    if through is not None:
        query = query.where(LedgerEntry.period <= through)
    rows = session.execute(query.group_by(LedgerEntry.ledger_account))
    return {name: int(total) for name, total in rows}


def period_sums(session: Session, period: str, prefix: str) -> list[tuple[str, str, str, int]]:
    """(ledger account, kind, currency, sum) of a period's legs on accounts with a prefix."""
    rows = session.execute(
        select(LedgerEntry.ledger_account, LedgerEntry.kind, LedgerEntry.currency,
               func.sum(LedgerEntry.amount_micros))
        .where(LedgerEntry.period == period, LedgerEntry.ledger_account.startswith(prefix))
        .group_by(LedgerEntry.ledger_account, LedgerEntry.kind, LedgerEntry.currency))
    return [(a, k, c, int(s)) for a, k, c, s in rows]


# -- summaries -------------------------------------------------------------------------

def usage_by_model_and_day(session: Session, account_id: str, since: dt.datetime, until: dt.datetime) -> list[Any]:
    """An account's usage by model and day (by event time)."""
    day = func.date(UsageRecord.occurred_at)
    return list(session.execute(
        select(Partner.slug, Model.slug, day.label("day"), UsageRecord.meter, UsageRecord.currency,
               func.count(UsageRecord.id), func.sum(UsageRecord.quantity), func.sum(UsageRecord.amount_micros))
        .join(Model, Model.id == UsageRecord.model_id)
        .join(Partner, Partner.id == UsageRecord.partner_id)
        .where(UsageRecord.account_id == account_id, UsageRecord.occurred_at >= since,
               UsageRecord.occurred_at < until)
        .group_by(Partner.slug, Model.slug, day, UsageRecord.meter, UsageRecord.currency)
        .order_by(day, Partner.slug, Model.slug)
    ))


def revenue_share_rows(session: Session, period: str) -> list[Any]:
    """Per partner, model, tier and licensor: usage booked in the period, less its refunds.

    Set-based over usage records and refunds (the split is stored on each), so it reads the
    same numbers the ledger holds without joining the ledger's larger table.
    """
    usage = (
        select(UsageRecord.partner_id.label("partner_id"), UsageRecord.model_id.label("model_id"),
               UsageRecord.tier.label("tier"), UsageRecord.licensor.label("licensor"),
               UsageRecord.currency.label("currency"), func.count().label("requests"),
               func.sum(UsageRecord.amount_micros).label("gross"),
               func.sum(UsageRecord.platform_micros).label("platform"),
               func.sum(UsageRecord.royalty_micros).label("royalty"),
               func.sum(UsageRecord.partner_micros).label("partner"),
               literal(0).label("refunds"))
        .where(UsageRecord.period == period)
        .group_by(UsageRecord.partner_id, UsageRecord.model_id, UsageRecord.tier, UsageRecord.licensor,
                  UsageRecord.currency))
    refunds = (
        select(Refund.partner_id, Refund.model_id, UsageRecord.tier, Refund.licensor, Refund.currency,
               literal(0), literal(0), -func.sum(Refund.platform_micros), -func.sum(Refund.royalty_micros),
               -func.sum(Refund.partner_micros), func.sum(Refund.amount_micros))
        .join(UsageRecord, UsageRecord.id == Refund.usage_id)
        .where(Refund.period == period)
        .group_by(Refund.partner_id, Refund.model_id, UsageRecord.tier, Refund.licensor, Refund.currency))
    both = usage.union_all(refunds).subquery()
    return list(session.execute(
        select(Partner.slug, Model.slug, both.c.tier, both.c.licensor, both.c.currency,
               func.sum(both.c.requests), func.sum(both.c.gross), func.sum(both.c.platform),
               func.sum(both.c.royalty), func.sum(both.c.partner), func.sum(both.c.refunds))
        .join(Model, Model.id == both.c.model_id).join(Partner, Partner.id == both.c.partner_id)
        .group_by(Partner.slug, Model.slug, both.c.tier, both.c.licensor, both.c.currency)
        .order_by(Partner.slug, Model.slug, both.c.tier)))


def inflight_by_model(session: Session, account_id: str) -> list[tuple[str, int]]:
    """The account's queued and running requests per model (read from the gateway's table)."""
    r = requests_table
    return [(m, int(n)) for m, n in session.execute(
        select(r.c.model_id, func.count()).where(r.c.account_id == account_id,
                                                 r.c.status.in_(("queued", "running")))
        .group_by(r.c.model_id))]


def payee(session: Session, kind: str, ref: str) -> Payee | None:
    """A payee by kind and ref."""
    return session.scalar(select(Payee).where(Payee.kind == kind, Payee.ref == ref))


"""All SQL of the period close: set-based aggregation over a period's usage and ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, func, insert, or_, select
from sqlalchemy.orm import Session

from billing.close.models import Invoice, InvoiceLine, LicensorReport, Payout, SlaCredit, Statement
from billing.models import License, Payee, PoolContract, Refund, UsageRecord
from billing.repository import requests_table
from partners.models import Model, Partner

ELIGIBLE_FOR_SLA = ("succeeded", "failed")


def usage_lines(session: Session, period: str) -> list[Any]:
    """Per account, billing mode, currency and model: requests, billable units, charges."""
    u = UsageRecord
    return list(session.execute(
        select(u.account_id, u.billing_mode, u.currency, u.model_id, u.meter, func.count(),
               func.sum(u.billable_quantity), func.sum(u.amount_micros))
        .where(u.period == period)
        .group_by(u.account_id, u.billing_mode, u.currency, u.model_id, u.meter)))


def refund_lines(session: Session, period: str) -> list[Any]:
    """Per account, billing mode, currency and model: refunds booked in the period."""
    return list(session.execute(
        select(Refund.account_id, UsageRecord.billing_mode, Refund.currency, Refund.model_id,
               func.count(), func.sum(Refund.amount_micros))
        .join(UsageRecord, UsageRecord.id == Refund.usage_id)
        .where(Refund.period == period)
        .group_by(Refund.account_id, UsageRecord.billing_mode, Refund.currency, Refund.model_id)))


def model_names(session: Session, model_ids: set[str]) -> dict[str, str]:
    """Each model's `owner/slug`."""
    if not model_ids:
        return {}
    rows = session.execute(select(Model.id, Partner.slug, Model.slug).join(Partner, Partner.id == Model.partner_id)
                           .where(Model.id.in_(model_ids)))
    return {mid: f"{owner}/{slug}" for mid, owner, slug in rows}


def _latest_before(session: Session, model: Any, keys: list[Any], period: str, *where: Any) -> list[Any]:
    """Each key's latest row before `period` (row_number, so SQLite and PostgreSQL agree)."""
    rank = func.row_number().over(partition_by=keys, order_by=model.period.desc()).label("rank")
    ranked = select(model, rank).where(model.period < period, *where).subquery()
    return list(session.execute(select(ranked).where(ranked.c.rank == 1)))


def previous_invoice_carries(session: Session, period: str) -> dict[tuple[str, str], int]:
    """Each account's sub-cent (or credit) balance carried out of its latest earlier invoice."""
    rows = _latest_before(session, Invoice, [Invoice.account_id, Invoice.currency], period,
                          Invoice.kind == "invoice")
    return {(r.account_id, r.currency): int(r.carried_out_micros) for r in rows}


def previous_statement_carries(session: Session, period: str) -> dict[tuple[str, str], int]:
    """Each payee's balance carried out of its latest earlier statement."""
    rows = _latest_before(session, Statement, [Statement.payee_id, Statement.currency], period)
    return {(r.payee_id, r.currency): int(r.carried_out_micros) for r in rows}


def insert_invoices(session: Session, invoices: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
    """Write a close's invoices and their lines in bulk."""
    for start in range(0, len(invoices), 5_000):
        session.execute(insert(Invoice), invoices[start:start + 5_000])
    for start in range(0, len(lines), 5_000):
        session.execute(insert(InvoiceLine), lines[start:start + 5_000])


def partner_usage(session: Session, period: str) -> list[Any]:
    """Per partner, currency and model: requests, gross and each share, refunds netted apart."""
    u = UsageRecord
    return list(session.execute(
        select(u.partner_id, u.currency, u.model_id, func.count(), func.sum(u.amount_micros),
               func.sum(u.platform_micros), func.sum(u.royalty_micros), func.sum(u.partner_micros))
        .where(u.period == period).group_by(u.partner_id, u.currency, u.model_id)))


def licensor_usage(session: Session, period: str) -> list[Any]:
    """Per licensor, currency and model (revenue-share usage): requests, generations, gross, royalty."""
    u = UsageRecord
    images = u.units["images"].as_float()
    generations = func.sum(case((images > 0, images), else_=1))
    return list(session.execute(
        select(u.licensor, u.currency, u.model_id, func.count(), generations, func.sum(u.amount_micros),
               func.sum(u.royalty_micros))
        .where(u.period == period, u.tier == "revenue_share", u.licensor.is_not(None))
        .group_by(u.licensor, u.currency, u.model_id)))


def payees(session: Session) -> dict[tuple[str, str], Payee]:
    """Every payee by (kind, ref)."""
    return {(p.kind, p.ref): p for p in session.scalars(select(Payee))}


def partner_names(session: Session, partner_ids: set[str]) -> dict[str, str]:
    """Partners' display names by id."""
    if not partner_ids:
        return {}
    return dict(session.execute(select(Partner.id, Partner.name).where(Partner.id.in_(partner_ids))).all())


def insert_statements(session: Session, statements: list[dict[str, Any]], payouts: list[dict[str, Any]]) -> None:
    """Write a close's statements and payouts in bulk."""
    if statements:
        session.execute(insert(Statement), statements)
    if payouts:
        session.execute(insert(Payout), payouts)


def insert_reports(session: Session, reports: list[dict[str, Any]]) -> None:
    """Write a close's licensor usage reports."""
    if reports:
        session.execute(insert(LicensorReport), reports)


def minimum_fee_licenses(session: Session, end: dt.datetime) -> list[License]:
    """Each model's license in force at the period's end, where it has a monthly minimum."""
    rank = func.row_number().over(partition_by=License.model_id,
                                  order_by=(License.effective_from.desc(), License.id.desc())).label("rank")
    ranked = select(License.id, rank).where(License.effective_from < end).subquery()
    return list(session.scalars(
        select(License).join(ranked, ranked.c.id == License.id)
        .where(ranked.c.rank == 1, License.tier == "revenue_share", License.minimum_fee_micros > 0)))


def royalties_of_model(session: Session, model_id: str, period: str) -> int:
    """What a model's licensor earned in a period: royalties less royalties refunded."""
    earned = session.scalar(select(func.coalesce(func.sum(UsageRecord.royalty_micros), 0))
                            .where(UsageRecord.model_id == model_id, UsageRecord.period == period)) or 0
    returned = session.scalar(select(func.coalesce(func.sum(Refund.royalty_micros), 0))
                              .where(Refund.model_id == model_id, Refund.period == period)) or 0
    return int(earned) - int(returned)


def contracts_in_force(session: Session, start: dt.datetime, end: dt.datetime) -> list[PoolContract]:
    """Pool contracts that ran at some point in [start, end)."""
    return list(session.scalars(select(PoolContract).where(
        PoolContract.effective_from < end,
        or_(PoolContract.ended_at.is_(None), PoolContract.ended_at > start)).order_by(PoolContract.id)))


def pool_compliance(session: Session, *, account_id: str, pool: str, start: dt.datetime,
                    end: dt.datetime, target_ms: int) -> tuple[int, int]:
    """(requests, requests finished within the target) of an account's pool in [start, end).

    Read from the gateway's `requests` table by name: a succeeded request counts as within
    the SLA when it completed within `target_ms` of being submitted; a failed one never does.
    Canceled, expired and blocked requests are the customer's or policy's doing, not ours.
    """
    r = requests_table
    if session.get_bind().dialect.name == "sqlite":
        latency_ms = (func.julianday(r.c.completed_at) - func.julianday(r.c.created_at)) * 86_400_000
    else:
        latency_ms = func.extract("epoch", r.c.completed_at - r.c.created_at) * 1000
    within = func.sum(case(((r.c.status == "succeeded") & (latency_ms <= target_ms), 1), else_=0))
    total, ok = session.execute(
        select(func.count(), func.coalesce(within, 0)).where(
            r.c.account_id == account_id, r.c.pool == pool, r.c.status.in_(ELIGIBLE_FOR_SLA),
            r.c.completed_at >= start, r.c.completed_at < end)).one()
    return int(total), int(ok)


def add_sla_credit(session: Session, credit: SlaCredit) -> None:
    """Record a pool's SLA result for a period."""
    session.add(credit)

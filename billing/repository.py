"""All SQL of the billing domain."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from billing.models import Account, LedgerEntry, License, PriceCard, UsageRecord
from partners.models import Model, Partner


def account(session: Session, account_id: str) -> Account | None:
    return session.get(Account, account_id)


def license_at(session: Session, model_id: str, when: dt.datetime) -> License | None:
    return session.scalar(
        select(License).where(License.model_id == model_id, License.effective_from <= when)
        .order_by(License.effective_from.desc(), License.id.desc()).limit(1)
    )


def price_card_at(session: Session, model_id: str, when: dt.datetime) -> PriceCard | None:
    return session.scalar(
        select(PriceCard).where(PriceCard.model_id == model_id, PriceCard.effective_from <= when)
        .order_by(PriceCard.effective_from.desc(), PriceCard.id.desc()).limit(1)
    )


def insert_usage_if_new(session: Session, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT (request_id, meter) DO NOTHING; True when a row was written."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(UsageRecord).values(**values).on_conflict_do_nothing(
            index_elements=["request_id", "meter"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(UsageRecord).values(**values).on_conflict_do_nothing(
            index_elements=["request_id", "meter"])
    else:  # pragma: no cover - other backends are not supported
        stmt = insert(UsageRecord).values(**values)
    return session.execute(stmt.returning(UsageRecord.id)).scalar() is not None


def usage_of_request(session: Session, request_id: str) -> list[UsageRecord]:
    return list(session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)))


def add_entries(session: Session, entries: list[dict[str, Any]]) -> None:
    session.execute(insert(LedgerEntry), entries)


def transaction_sums(session: Session) -> list[tuple[str, int]]:
    """Each ledger transaction's sum (all zero in a healthy ledger)."""
    rows = session.execute(
        select(LedgerEntry.transaction_id, func.sum(LedgerEntry.amount_micros))
        .group_by(LedgerEntry.transaction_id)
    )
    return [(tid, int(total)) for tid, total in rows]


def balances(session: Session, prefix: str = "") -> dict[str, int]:
    rows = session.execute(
        select(LedgerEntry.ledger_account, func.sum(LedgerEntry.amount_micros))
        .where(LedgerEntry.ledger_account.startswith(prefix))
        .group_by(LedgerEntry.ledger_account)
    )
    return {name: int(total) for name, total in rows}


def usage_by_model_and_day(session: Session, account_id: str, since: dt.datetime, until: dt.datetime) -> list[Any]:
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
    """Per partner, model and license tier: counts, units and each ledger leg for the period."""
    leg = LedgerEntry.ledger_account

    def leg_sum(prefix: str) -> Any:
        return func.coalesce(func.sum(case((leg.startswith(prefix), LedgerEntry.amount_micros), else_=0)), 0)

    return list(session.execute(
        select(
            Partner.slug, Model.slug, License.tier, License.licensor, UsageRecord.currency,
            func.count(func.distinct(UsageRecord.id)),
            leg_sum("customer:"), leg_sum("platform:"), leg_sum("licensor:"), leg_sum("partner:"),
        )
        .join(LedgerEntry, LedgerEntry.usage_id == UsageRecord.id)
        .join(Model, Model.id == UsageRecord.model_id)
        .join(Partner, Partner.id == UsageRecord.partner_id)
        .join(License, License.id == UsageRecord.license_id)
        .where(UsageRecord.period == period)
        .group_by(Partner.slug, Model.slug, License.tier, License.licensor, UsageRecord.currency)
        .order_by(Partner.slug, Model.slug)
    ))

"""All SQL of the finance reports."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from billing.close.models import Invoice, Payout, Statement
from billing.models import Account, CreditBalance, LedgerEntry, Payee, Refund, UsageRecord
from billing.reports.models import FinanceKey


def finance_key_by_digest(session: Session, digest: str) -> FinanceKey | None:
    """A live finance key by its digest."""
    return session.scalar(select(FinanceKey).where(FinanceKey.digest == digest, FinanceKey.revoked_at.is_(None)))


def finance_key(session: Session, key_id: str) -> FinanceKey | None:
    """A live finance key by id."""
    key = session.get(FinanceKey, key_id)
    return key if key is not None and key.revoked_at is None else None


def revenue_by_period(session: Session, first: str, last: str) -> list[Any]:
    """Per booking period and currency: gross, refunds and each party's share (net of refunds)."""
    u, r = UsageRecord, Refund
    usage = select(u.period.label("period"), u.currency.label("currency"), func.count().label("requests"),
                   func.sum(u.amount_micros).label("gross"), literal(0).label("refunds"),
                   func.sum(u.platform_micros).label("platform"), func.sum(u.royalty_micros).label("royalty"),
                   func.sum(u.partner_micros).label("partner")
                   ).where(u.period.between(first, last)).group_by(u.period, u.currency)
    refunds = select(r.period, r.currency, literal(0), literal(0), func.sum(r.amount_micros),
                     -func.sum(r.platform_micros), -func.sum(r.royalty_micros), -func.sum(r.partner_micros)
                     ).where(r.period.between(first, last)).group_by(r.period, r.currency)
    both = usage.union_all(refunds).subquery()
    return list(session.execute(
        select(both.c.period, both.c.currency, func.sum(both.c.requests), func.sum(both.c.gross),
               func.sum(both.c.refunds), func.sum(both.c.platform), func.sum(both.c.royalty),
               func.sum(both.c.partner)).group_by(both.c.period, both.c.currency).order_by(both.c.period)))


def customer_ledger(session: Session, period: str) -> list[tuple[str, str, str, int]]:
    """(customer ledger account, kind, currency, sum) of a period's customer legs."""
    rows = session.execute(
        select(LedgerEntry.ledger_account, LedgerEntry.kind, LedgerEntry.currency, func.sum(LedgerEntry.amount_micros))
        .where(LedgerEntry.period == period, LedgerEntry.ledger_account.startswith("customer:"))
        .group_by(LedgerEntry.ledger_account, LedgerEntry.kind, LedgerEntry.currency))
    return [(a, k, c, int(s)) for a, k, c, s in rows]


def invoices(session: Session, period: str) -> list[tuple[Invoice, str]]:
    """A period's invoices and statements with account names."""
    return list(session.execute(select(Invoice, Account.name).join(Account, Account.id == Invoice.account_id)
                                .where(Invoice.period == period).order_by(Account.name, Invoice.kind)))


def statements(session: Session, period: str) -> list[tuple[Statement, Payee, Payout | None]]:
    """A period's payee statements with their payees and payouts."""
    return list(session.execute(
        select(Statement, Payee, Payout).join(Payee, Payee.id == Statement.payee_id)
        .outerjoin(Payout, Payout.statement_id == Statement.id)
        .where(Statement.period == period).order_by(Payee.kind, Payee.name)))


def statements_of_payee(session: Session, payee_id: str) -> list[tuple[Statement, Payout | None]]:
    """A payee's statements, newest first, with payouts."""
    return list(session.execute(
        select(Statement, Payout).outerjoin(Payout, Payout.statement_id == Statement.id)
        .where(Statement.payee_id == payee_id).order_by(Statement.period.desc())))


def account_names(session: Session, ids: set[str]) -> dict[str, str]:
    """Accounts' names by id."""
    if not ids:
        return {}
    return dict(session.execute(select(Account.id, Account.name).where(Account.id.in_(ids))).all())


def credit_balances(session: Session) -> dict[str, int]:
    """Every prepaid account's stored credit balance."""
    return {a: int(b) for a, b in session.execute(select(CreditBalance.account_id, CreditBalance.balance_micros))}


def ledger_totals(session: Session) -> tuple[int, int]:
    """(sum of every leg, number of transactions that do not sum to zero)."""
    total = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))) or 0
    unbalanced = select(LedgerEntry.transaction_id).group_by(LedgerEntry.transaction_id).having(
        func.sum(LedgerEntry.amount_micros) != 0).subquery()
    return int(total), int(session.scalar(select(func.count()).select_from(unbalanced)) or 0)

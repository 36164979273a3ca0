"""All SQL of payments: top-ups, Stripe events, and the close's outbox rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.close.models import Invoice, InvoiceLine, LicensorReport, Payout
from billing.payments.models import StripeEvent, Topup
from billing.repository import _insert


def store_event(session: Session, event: dict[str, Any]) -> bool:
    """Record a Stripe event once; False when its id was seen before."""
    stmt = _insert(session, StripeEvent).values(
        id=event["id"], type=event.get("type", ""), payload=event, outcome="").on_conflict_do_nothing(
        index_elements=["id"]).returning(StripeEvent.id)
    return session.execute(stmt).scalar() is not None


def set_outcome(session: Session, event_id: str, outcome: str) -> None:
    """Note what acting on a stored event did."""
    row = session.get(StripeEvent, event_id)
    if row is not None:
        row.outcome = outcome[:200]


def _locked(session: Session, model: Any, row_id: str, *, skip_locked: bool = False) -> Any:
    return session.scalar(select(model).where(model.id == row_id)
                          .with_for_update(skip_locked=skip_locked).execution_options(populate_existing=True))


def topup_for_update(session: Session, topup_id: str) -> Topup | None:
    """A top-up, locked."""
    return _locked(session, Topup, topup_id)


def insert_topup_if_new(session: Session, values: dict[str, Any]) -> bool:
    """Add a top-up row unless its id, PaymentIntent or Idempotency-Key is taken (waiting for
    an uncommitted one to land or go)."""
    stmt = _insert(session, Topup).values(**values).on_conflict_do_nothing().returning(Topup.id)
    return session.execute(stmt).scalar() is not None


def insert_keyed_topup(session: Session, values: dict[str, Any]) -> Topup | None:
    """Add a top-up that carries an Idempotency-Key, or None when the account already has one
    with that key (a concurrent duplicate waits here for the first to commit or roll back)."""
    stmt = _insert(session, Topup).values(**values).on_conflict_do_nothing(
        index_elements=["account_id", "idempotency_key"]).returning(Topup.id)
    if session.execute(stmt).scalar() is None:
        return None
    return session.get(Topup, values["id"])


def topup_by_idempotency_key(session: Session, account_id: str, key: str) -> Topup | None:
    """The account's top-up made under this Idempotency-Key."""
    return session.scalar(select(Topup).where(Topup.account_id == account_id, Topup.idempotency_key == key)
                          .execution_options(populate_existing=True))


def topup_by_intent(session: Session, payment_intent_id: str) -> Topup | None:
    """The top-up a PaymentIntent pays for."""
    return session.scalar(select(Topup).where(Topup.payment_intent_id == payment_intent_id))


def invoice_for_update(session: Session, invoice_id: str, *, skip_locked: bool = False) -> Invoice | None:
    """An invoice, locked (or None when another worker holds it and `skip_locked`)."""
    return _locked(session, Invoice, invoice_id, skip_locked=skip_locked)


def invoice_by_stripe_id(session: Session, stripe_invoice_id: str) -> Invoice | None:
    """Our invoice for a Stripe invoice id."""
    return session.scalar(select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id))


def invoice_lines(session: Session, invoice_id: str) -> list[InvoiceLine]:
    """An invoice's lines in order."""
    return list(session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id)
                                .order_by(InvoiceLine.position)))


def payout_for_update(session: Session, payout_id: str, *, skip_locked: bool = False) -> Payout | None:
    """A payout, locked (or None when another worker holds it and `skip_locked`)."""
    return _locked(session, Payout, payout_id, skip_locked=skip_locked)


def payout_by_transfer(session: Session, transfer_id: str) -> Payout | None:
    """The payout a Connect transfer carried."""
    return session.scalar(select(Payout).where(Payout.stripe_transfer_id == transfer_id))


def outbox(session: Session, period: str | None = None) -> dict[str, list[str]]:
    """Ids of what still has to go out: draft invoices, pending payouts, pending reports."""
    def ids(model: Any, *where: Any) -> list[str]:
        query = select(model.id).where(*where)
        if period is not None:
            query = query.where(model.period == period)
        return list(session.scalars(query.order_by(model.id)))

    return {
        "invoices": ids(Invoice, Invoice.kind == "invoice", Invoice.status == "draft"),
        "payouts": ids(Payout, Payout.status == "pending"),
        "reports": ids(LicensorReport, LicensorReport.status == "pending"),
    }

"""What a period close writes: invoices, payee statements, payouts, reports, SLA credits."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class Invoice(Base):
    """A customer's bill for a period (postpaid), or its credit statement (prepaid).

    Amounts stay in micro-units; `amount_due_cents` is the only rounded figure, and what
    rounding left over (`carried_out_micros`) is the next invoice's `carried_in_micros`.
    """

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("account_id", "period", "currency", "kind"),
        CheckConstraint("kind IN ('invoice', 'statement')", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("inv"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    period: Mapped[str] = mapped_column(String(7), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(10))
    total_micros: Mapped[int] = mapped_column(BigInteger)
    carried_in_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_due_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    carried_out_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # draft → open (sent to Stripe) → paid; `nothing_due` and `settled` (prepaid) never go out.
    status: Mapped[str] = mapped_column(String(12), default="draft")
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    amount_paid_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    paid_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class InvoiceLine(Base):
    """One line of an invoice: a model's usage, a refund, a pool fee, an SLA credit…"""

    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("inl"))
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(String(40), default=None)
    description: Mapped[str] = mapped_column(String(300))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    quantity: Mapped[decimal.Decimal] = mapped_column(Numeric(24, 6), default=0)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    # Set when the line is sent: whole cents, the last line absorbing the carried sub-cents.
    amount_cents: Mapped[int | None] = mapped_column(BigInteger, default=None)
    stripe_item_id: Mapped[str | None] = mapped_column(String(64), default=None)


class Statement(Base):
    """What a partner or licensor earned in a period, and what is paid out or carried."""

    __tablename__ = "payee_statements"
    __table_args__ = (UniqueConstraint("payee_id", "period", "currency"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("stm"))
    payee_id: Mapped[str] = mapped_column(ForeignKey("payees.id"), index=True)
    period: Mapped[str] = mapped_column(String(7), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    # Customers' charges on the payee's models (partners) or licensed models (licensors).
    gross_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the platform kept (fees) and what went to licensors, out of `gross`.
    fees_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    royalties_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Credited to the payee besides usage (minimum-fee top-ups, returned payouts).
    credits_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Taken back for refunds (positive number; a refund after payout is clawed back here).
    refunds_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    net_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    carried_in_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    payable_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    payout_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    carried_out_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Payout(Base):
    """A Connect transfer of a statement's payout; its id is the Stripe idempotency key."""

    __tablename__ = "payouts"
    __table_args__ = (CheckConstraint("amount_cents > 0", name="amount_cents"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pyo"))
    statement_id: Mapped[str] = mapped_column(ForeignKey("payee_statements.id"), unique=True)
    payee_id: Mapped[str] = mapped_column(ForeignKey("payees.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    destination: Mapped[str] = mapped_column(String(64))
    # pending → paid; reversed when Stripe reverses the transfer (the money is owed again).
    status: Mapped[str] = mapped_column(String(12), default="pending")
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    paid_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class LicensorReport(Base):
    """A licensor's usage counts for a period, and each attempt to deliver them."""

    __tablename__ = "licensor_reports"
    __table_args__ = (UniqueConstraint("payee_id", "period"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lrp"))
    payee_id: Mapped[str] = mapped_column(ForeignKey("payees.id"))
    period: Mapped[str] = mapped_column(String(7))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending → sent; `unconfigured` when the licensor has no endpoint (kept for finance).
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class SlaCredit(Base):
    """A pool's compliance for a period and the credit its band earned."""

    __tablename__ = "sla_credits"
    __table_args__ = (UniqueConstraint("contract_id", "period"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("sla"))
    contract_id: Mapped[str] = mapped_column(ForeignKey("pool_contracts.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    period: Mapped[str] = mapped_column(String(7))
    pool: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    within_target: Mapped[int] = mapped_column(BigInteger, default=0)
    compliance_bps: Mapped[int] = mapped_column(default=10_000)
    credit_bps: Mapped[int] = mapped_column(default=0)
    fee_micros: Mapped[int] = mapped_column(BigInteger)
    credit_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

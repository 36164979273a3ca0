"""Customer accounts, licenses, price cards, usage, the double-entry ledger and periods."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Numeric,
    String,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class Account(Base):
    """A customer account: who pays for requests."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("acc"))
    name: Mapped[str] = mapped_column(String(200))
    billing_mode: Mapped[str] = mapped_column(String(16), default="postpaid")
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    commercial_use: Mapped[bool] = mapped_column(default=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class License(Base):
    """How a model's revenue is split; effective-dated so a change never rewrites the past."""

    __tablename__ = "licenses"
    __table_args__ = (
        CheckConstraint("tier IN ('open', 'revenue_share', 'partner_priced')", name="tier"),
        CheckConstraint("royalty_bps BETWEEN 0 AND 10000", name="royalty_bps"),
        CheckConstraint("platform_fee_bps BETWEEN 0 AND 10000", name="platform_fee_bps"),
        CheckConstraint("royalty_per_unit_micros >= 0 AND minimum_fee_micros >= 0 "
                        "AND hosting_fee_per_gpu_second_micros >= 0 AND included_units >= 0",
                        name="non_negative"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lic"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    tier: Mapped[str] = mapped_column(String(16))
    licensor: Mapped[str | None] = mapped_column(String(64), default=None)
    royalty_bps: Mapped[int] = mapped_column(default=0)
    # revenue_share: a royalty per billable unit beyond the monthly included volume, and a
    # monthly minimum the platform tops the licensor up to at close.
    royalty_per_unit_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    included_units: Mapped[decimal.Decimal] = mapped_column(Numeric(20, 6), default=0)
    minimum_fee_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    platform_fee_bps: Mapped[int] = mapped_column(default=0)
    # partner_priced: the platform's hosting fee per GPU-second the model reports.
    hosting_fee_per_gpu_second_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PriceCard(Base):
    """What a model's billable unit costs from a point in time.

    A card may be narrowed to one model version and/or one customer account (an enterprise
    contract); the most specific card in force wins.
    """

    __tablename__ = "price_cards"
    __table_args__ = (
        CheckConstraint("unit_price_micros >= 0", name="unit_price_micros"),
        CheckConstraint("minimum_micros >= 0", name="minimum_micros"),
        Index("ix_price_cards_model_effective", "model_id", "effective_from"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("prc"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), default=None)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), default=None)
    unit: Mapped[str] = mapped_column(String(32))
    unit_price_micros: Mapped[int] = mapped_column(BigInteger)
    # Graduated volume tiers over the account's monthly units of the model:
    # [{"up_to": 1000, "unit_price_micros": 25000}, {"up_to": null, "unit_price_micros": 20000}]
    tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # The least one request costs, whatever its units.
    minimum_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ends_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class UsageRecord(Base):
    """One charge: a succeeded request's units on one meter, priced and split when recorded.

    `period` is the period the charge is booked in: the event's own month, or the next open
    one when usage arrives after its month closed (then `event_period` tells them apart).
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("request_id", "meter"),
        Index("ix_usage_records_account_occurred", "account_id", "occurred_at"),
        Index("ix_usage_records_period_partner", "period", "partner_id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("use"))
    request_id: Mapped[str] = mapped_column(String(40))
    meter: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[decimal.Decimal] = mapped_column(Numeric(20, 6))
    billable_quantity: Mapped[decimal.Decimal] = mapped_column(Numeric(20, 6), default=0)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    version_id: Mapped[str] = mapped_column(String(40))
    price_card_id: Mapped[str] = mapped_column(ForeignKey("price_cards.id"))
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    tier: Mapped[str] = mapped_column(String(16), default="open")
    # Which customer ledger account was charged: prepaid credit or postpaid receivable.
    billing_mode: Mapped[str] = mapped_column(String(8), default="postpaid")
    licensor: Mapped[str | None] = mapped_column(String(64), default=None)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    platform_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    royalty_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    partner_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(7))
    event_period: Mapped[str] = mapped_column(String(7), default="")
    occurred_at: Mapped[dt.datetime]
    ingested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    units: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    transaction_id: Mapped[str | None] = mapped_column(String(40), default=None)


class UsageCounter(Base):
    """Running units per period, for volume tiers and licensors' included volume."""

    __tablename__ = "usage_counters"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    quantity: Mapped[decimal.Decimal] = mapped_column(Numeric(24, 6), default=0)


class LedgerEntry(Base):
    """One leg of a balanced transaction; debits positive, credits negative. Append-only."""

    __tablename__ = "ledger_entries"
    # Few indexes on purpose: every usage appends about three legs, and each index is a write.
    # A period's legs are read whole at close (a sequential scan), so no (period, …) index.
    __table_args__ = (
        Index("ix_ledger_entries_ledger_account", "ledger_account", "period"),
        Index("ix_ledger_entries_ref", "ref", postgresql_where=text("ref IS NOT NULL"),
              sqlite_where=text("ref IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("led"))
    transaction_id: Mapped[str] = mapped_column(String(40), index=True)
    ledger_account: Mapped[str] = mapped_column(String(120))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # The period the transaction is booked in, and what kind of event it records.
    period: Mapped[str] = mapped_column(String(7), default="")
    kind: Mapped[str] = mapped_column(String(24), default="usage")
    usage_id: Mapped[str | None] = mapped_column(ForeignKey("usage_records.id"), default=None)
    # The object the transaction belongs to: a refund, top-up, invoice, payout, SLA credit…
    # (usage legs leave it empty: `usage_id` already says which charge they belong to).
    ref: Mapped[str | None] = mapped_column(String(40), default=None)
    memo: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


@event.listens_for(LedgerEntry, "before_update")
@event.listens_for(LedgerEntry, "before_delete")
def _ledger_is_append_only(*_: Any) -> None:
    raise RuntimeError("ledger entries are append-only: post a reversing transaction instead")


class CreditBalance(Base):
    """A prepaid account's spendable credit, kept beside the ledger for the real-time check.

    Written in the same transaction as every ledger leg on `customer:{id}:credit`, so it is
    always minus that ledger account's balance; the reconciliation view proves it.
    """

    __tablename__ = "credit_balances"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BillingPeriod(Base):
    """A month's books: open while usage is booked into it; frozen from `closing` on.

    `closing` is committed first, on its own, so usage arriving during the close is already
    booked in the next period; `closed` is set by the transaction that writes the close.
    """

    __tablename__ = "billing_periods"
    __table_args__ = (CheckConstraint("status IN ('open', 'closing', 'closed')", name="status"),)

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), default="open")
    closed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    totals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Refund(Base):
    """Money given back on a usage charge, posted as a reversing transaction in an open period."""

    __tablename__ = "refunds"
    __table_args__ = (CheckConstraint("amount_micros > 0", name="amount_micros"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rfd"))
    usage_id: Mapped[str] = mapped_column(ForeignKey("usage_records.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    licensor: Mapped[str | None] = mapped_column(String(64), default=None)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    platform_micros: Mapped[int] = mapped_column(BigInteger)
    royalty_micros: Mapped[int] = mapped_column(BigInteger)
    partner_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(7), index=True)
    reason: Mapped[str] = mapped_column(String(500), default="")
    transaction_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PoolContract(Base):
    """A customer's dedicated SLA pool: a monthly fee and the latency target it promises."""

    __tablename__ = "pool_contracts"
    __table_args__ = (CheckConstraint("monthly_fee_micros >= 0", name="monthly_fee_micros"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("slc"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    pool: Mapped[str] = mapped_column(String(64))
    monthly_fee_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    # A request meets the SLA when it finishes within this many ms of being submitted.
    latency_target_ms: Mapped[int]
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Payee(Base):
    """Someone the platform pays: a partner, or a licensor owed royalties.

    Holds the Stripe Connect account payouts go to and, for licensors, where their usage
    reports are sent.
    """

    __tablename__ = "payees"
    __table_args__ = (
        UniqueConstraint("kind", "ref"),
        CheckConstraint("kind IN ('partner', 'licensor')", name="kind"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pye"))
    kind: Mapped[str] = mapped_column(String(8))
    # The partner id, or the licensor's slug as named on licenses.
    ref: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    stripe_account_id: Mapped[str | None] = mapped_column(String(64), default=None)
    report_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    report_token: Mapped[str | None] = mapped_column(String(400), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

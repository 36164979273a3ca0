"""Customer accounts, licenses, price cards, usage records and the double-entry ledger."""

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
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class License(Base):
    """How a model's revenue is split; effective-dated so a change never rewrites the past."""

    __tablename__ = "licenses"
    __table_args__ = (
        CheckConstraint("tier IN ('open', 'revenue_share', 'partner_priced')", name="tier"),
        CheckConstraint("royalty_bps BETWEEN 0 AND 10000", name="royalty_bps"),
        CheckConstraint("platform_fee_bps BETWEEN 0 AND 10000", name="platform_fee_bps"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("lic"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    tier: Mapped[str] = mapped_column(String(16))
    licensor: Mapped[str | None] = mapped_column(String(64), default=None)
    royalty_bps: Mapped[int] = mapped_column(default=0)
    platform_fee_bps: Mapped[int] = mapped_column(default=0)
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PriceCard(Base):
    """What a model's billable unit costs from a point in time."""

    __tablename__ = "price_cards"
    __table_args__ = (CheckConstraint("unit_price_micros >= 0", name="unit_price_micros"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("prc"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    unit: Mapped[str] = mapped_column(String(32))
    unit_price_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    effective_from: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """One charge: a succeeded request's units on one meter, priced when recorded."""

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
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    version_id: Mapped[str] = mapped_column(String(40))
    price_card_id: Mapped[str] = mapped_column(ForeignKey("price_cards.id"))
    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.id"))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(7))
    occurred_at: Mapped[dt.datetime]
    ingested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    units: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LedgerEntry(Base):
    """One leg of a balanced transaction; debits positive, credits negative. Append-only."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_ledger_account", "ledger_account", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("led"))
    transaction_id: Mapped[str] = mapped_column(String(40), index=True)
    ledger_account: Mapped[str] = mapped_column(String(120))
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    usage_id: Mapped[str | None] = mapped_column(ForeignKey("usage_records.id"), default=None, index=True)
    memo: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

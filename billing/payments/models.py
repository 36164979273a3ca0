"""Prepaid top-ups and the Stripe events we have received."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class Topup(Base):
    """A card payment that adds prepaid credit once Stripe says it succeeded."""

    __tablename__ = "credit_topups"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_cents"),
        # One top-up per Idempotency-Key and account: a concurrent duplicate waits on the
        # first insert, then finds its row.
        UniqueConstraint("account_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("top"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # pending → succeeded (credited) | failed | canceled
    status: Mapped[str] = mapped_column(String(12), default="pending")
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    client_secret: Mapped[str | None] = mapped_column(String(200), default=None)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    body_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    credited_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class StripeEvent(Base):
    """A verified Stripe webhook event, stored once before it is acted on."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    type: Mapped[str] = mapped_column(String(80))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

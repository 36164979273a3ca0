"""Plain factory functions for billing tests: partners, priced models, accounts, usage."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from sqlalchemy.orm import Session

from billing import service as billing
from billing.models import Account, UsageRecord
from partners import service as partners
from partners.models import Model, Partner

SINCE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
_seq = itertools.count(1)


def at(period: str, day: int = 15, hour: int = 12) -> dt.datetime:
    """A time inside a period."""
    year, month = (int(x) for x in period.split("-"))
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC)


def partner(db: Session, slug: str | None = None) -> Partner:
    slug = slug or f"lab-{next(_seq)}"
    created, _ = partners.create_partner(db, slug=slug, name=slug.title())
    return created


def model(db: Session, owner: Partner, slug: str | None = None, *, tier: str = "open", unit: str = "images",
          price: int = 40_000, effective_from: dt.datetime = SINCE, **terms: Any) -> Model:
    created = partners.create_model(db, owner, slug=slug or f"model-{next(_seq)}")
    billing.set_pricing(db, created, tier=tier, unit=unit, unit_price_micros=price,
                        effective_from=effective_from, **terms)
    return created


def account(db: Session, *, mode: str = "postpaid", commercial: bool = True) -> Account:
    return billing.create_account(db, name=f"Customer {next(_seq)}", billing_mode=mode,
                                  commercial_use=commercial)


def use(db: Session, account: Account, model: Model, when: dt.datetime, units: dict[str, Any] | None = None,
        request_id: str | None = None) -> UsageRecord:
    return billing.record_usage(db, request_id=request_id or f"req_{next(_seq):08d}", account_id=account.id,
                                model=model, version_id="ver_test", units=units or {"images": 1},
                                occurred_at=when)

"""Billing use cases: pricing, metering with ledger postings, usage summaries, reports."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.orm import Session

from billing import ledger
from billing import repository as repo
from billing.models import Account, License, PriceCard, UsageRecord
from engine.manifest import BILLABLE_UNITS
from kit.db import utcnow
from kit.errors import InvalidInput, NotFound
from kit.ids import new_id
from partners.models import Model


def create_account(session: Session, *, name: str, billing_mode: str = "postpaid",
                   currency: str = "usd", commercial_use: bool = True) -> Account:
    """A customer account."""
    if billing_mode not in ("prepaid", "postpaid"):
        raise InvalidInput("billing_mode must be 'prepaid' or 'postpaid'")
    account = Account(name=name, billing_mode=billing_mode, currency=currency, commercial_use=commercial_use)
    session.add(account)
    session.flush()
    return account


def set_pricing(
    session: Session, model: Model, *, tier: str, unit: str, unit_price_micros: int,
    currency: str = "usd", licensor: str | None = None, royalty_bps: int = 0,
    platform_fee_bps: int = 0, effective_from: dt.datetime | None = None,
) -> tuple[License, PriceCard]:
    """New license terms and price card for a model, effective from now (or a given time)."""
    if unit not in BILLABLE_UNITS:
        raise InvalidInput(f"unit must be one of {', '.join(BILLABLE_UNITS)}")
    if unit_price_micros < 0:
        raise InvalidInput("unit_price_micros cannot be negative")
    if tier == "revenue_share" and not 0 < royalty_bps <= 10_000:
        raise InvalidInput("a revenue_share license needs royalty_bps between 1 and 10000")
    if tier == "partner_priced" and not 0 <= platform_fee_bps <= 10_000:
        raise InvalidInput("platform_fee_bps must be between 0 and 10000")
    when = effective_from or utcnow()
    license_ = License(model_id=model.id, tier=tier, licensor=licensor, royalty_bps=royalty_bps,
                       platform_fee_bps=platform_fee_bps, effective_from=when)
    card = PriceCard(model_id=model.id, unit=unit, unit_price_micros=unit_price_micros,
                     currency=currency, effective_from=when)
    session.add_all([license_, card])
    session.flush()
    return license_, card


@dataclass(frozen=True)
class Pricing:
    license: License
    price_card: PriceCard


def pricing_at(session: Session, model_id: str, when: dt.datetime | None = None) -> Pricing:
    """The license and price card in force for a model at a time."""
    when = when or utcnow()
    license_ = repo.license_at(session, model_id, when)
    card = repo.price_card_at(session, model_id, when)
    if license_ is None or card is None:
        raise NotFound("this model has no price card yet and cannot be called")
    return Pricing(license_, card)


def period_of(when: dt.datetime) -> str:
    """The billing period (calendar month, UTC) a time falls in."""
    return when.astimezone(dt.UTC).strftime("%Y-%m")


def _quantity(units: dict[str, Any], meter: str) -> Decimal:
    raw = units.get(meter)
    if raw is None:
        raise InvalidInput(f"the model reported no {meter!r} units")
    try:
        quantity = Decimal(str(raw))
    except InvalidOperation as exc:
        raise InvalidInput(f"{meter} units are not a number: {raw!r}") from exc
    if not quantity.is_finite() or quantity < 0:
        raise InvalidInput(f"{meter} units must be a finite, non-negative number, got {raw!r}")
    return quantity.quantize(Decimal("0.000001"))


def record_usage(
    session: Session, *, request_id: str, account_id: str, model: Model, version_id: str,
    units: dict[str, Any], occurred_at: dt.datetime,
) -> UsageRecord:
    """Charge a succeeded request once: a usage record plus its balanced ledger postings.

    Safe to call twice for the same request: the second call finds the first record.
    """
    pricing = pricing_at(session, model.id, occurred_at)
    card, license_ = pricing.price_card, pricing.license
    quantity = _quantity(units, card.unit)
    amount = math.ceil(quantity * card.unit_price_micros)
    usage_id = new_id("use")
    written = repo.insert_usage_if_new(session, {
        "id": usage_id, "request_id": request_id, "meter": card.unit, "quantity": quantity,
        "account_id": account_id, "model_id": model.id, "partner_id": model.partner_id,
        "version_id": version_id, "price_card_id": card.id, "license_id": license_.id,
        "amount_micros": amount, "currency": card.currency, "period": period_of(occurred_at),
        "occurred_at": occurred_at, "ingested_at": utcnow(), "units": units,
    })
    if written:
        split = ledger.split_charge(amount, tier=license_.tier, royalty_bps=license_.royalty_bps,
                                    platform_fee_bps=license_.platform_fee_bps)
        licensor = license_.licensor or model.partner_id
        transaction_id = new_id("txn")
        repo.add_entries(session, [
            {"id": new_id("led"), "transaction_id": transaction_id, "ledger_account": name,
             "amount_micros": amount_micros, "currency": card.currency, "usage_id": usage_id,
             "memo": f"usage {request_id}", "created_at": utcnow()}
            for name, amount_micros in ledger.postings(
                split, account_id=account_id, licensor=licensor, partner_id=model.partner_id)
        ])
    record = next(r for r in repo.usage_of_request(session, request_id) if r.meter == card.unit)
    return record


def usage_summary(session: Session, account_id: str, *, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """The account's usage and cost by model and day."""
    return [
        {"model": f"{owner}/{slug}", "day": str(day), "meter": meter, "currency": currency,
         "requests": count, "quantity": float(quantity), "amount_micros": int(amount)}
        for owner, slug, day, meter, currency, count, quantity, amount
        in repo.usage_by_model_and_day(session, account_id, since, until)
    ]


REPORT_COLUMNS = ("partner", "model", "license_tier", "licensor", "currency", "requests",
                  "gross_micros", "platform_micros", "royalty_micros", "partner_micros")


def revenue_share_report(session: Session, period: str) -> list[dict[str, Any]]:
    """Per partner and model: gross charged, and what the platform, licensor and partner got."""
    try:
        dt.datetime.strptime(period, "%Y-%m")
    except ValueError as exc:
        raise InvalidInput(f"period must look like 2026-11, got {period!r}") from exc
    rows = []
    for partner, model, tier, licensor, currency, count, customer, platform, royalty, partner_leg in (
        repo.revenue_share_rows(session, period)
    ):
        rows.append(dict(zip(REPORT_COLUMNS, (
            partner, model, tier, licensor or partner, currency, int(count), int(customer),
            -int(platform), -int(royalty), -int(partner_leg)), strict=True)))
    return rows


def ledger_is_balanced(session: Session) -> bool:
    """Every transaction sums to zero."""
    return all(total == 0 for _, total in repo.transaction_sums(session))

"""Billing use cases: accounts, pricing, authorization, metering, refunds, corrections, reports."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from billing import ledger, periods, pricing
from billing import repository as repo
from billing.charge import Charged, charge_request
from billing.metering import PriceBook, UsageItem, booking_period, record_batch
from billing.models import Account, License, Payee, PoolContract, PriceCard, Refund, UsageRecord
from engine.manifest import BILLABLE_UNITS
from kit.db import utcnow
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound, PaymentRequired
from kit.ids import new_id
from kit.money import format_micros
from partners.models import Model, Partner

period_of = periods.period_of

__all__ = ["Charged", "UsageItem", "booking_period", "charge_request", "period_of"]


def create_account(session: Session, *, name: str, billing_mode: str = "postpaid",
                   currency: str = "usd", commercial_use: bool = True, email: str | None = None) -> Account:
    """A customer account."""
    if billing_mode not in ("prepaid", "postpaid"):
        raise InvalidInput("billing_mode must be 'prepaid' or 'postpaid'")
    account = Account(name=name, billing_mode=billing_mode, currency=currency,
                      commercial_use=commercial_use, email=email)
    session.add(account)
    session.flush()
    return account


def _check_not_in_closed_period(session: Session, when: dt.datetime) -> None:
    last_closed = repo.latest_closed_period(session)
    if last_closed is not None and periods.period_of(when) <= last_closed:
        raise InvalidInput(f"prices cannot change inside a closed period (closed through {last_closed})")


def set_pricing(
    session: Session, model: Model, *, tier: str, unit: str, unit_price_micros: int,
    currency: str = "usd", licensor: str | None = None, royalty_bps: int = 0,
    platform_fee_bps: int = 0, effective_from: dt.datetime | None = None,
    royalty_per_unit_micros: int = 0, included_units: int | Decimal = 0, minimum_fee_micros: int = 0,
    hosting_fee_per_gpu_second_micros: int = 0, tiers: list[dict[str, Any]] | None = None,
    minimum_micros: int = 0, version_id: str | None = None,
) -> tuple[License, PriceCard]:
    """New license terms and price card for a model, effective from now (or a given time)."""
    if unit not in BILLABLE_UNITS:
        raise InvalidInput(f"unit must be one of {', '.join(BILLABLE_UNITS)}")
    if min(unit_price_micros, minimum_micros, royalty_per_unit_micros, minimum_fee_micros,
           hosting_fee_per_gpu_second_micros) < 0 or Decimal(included_units) < 0:
        raise InvalidInput("prices, fees and volumes cannot be negative")
    if tier == "revenue_share" and not (0 < royalty_bps <= 10_000 or royalty_per_unit_micros > 0):
        raise InvalidInput("a revenue_share license needs royalty_bps between 1 and 10000 "
                           "or a per-unit royalty")
    if not 0 <= royalty_bps <= 10_000 or not 0 <= platform_fee_bps <= 10_000:
        raise InvalidInput("basis points must be between 0 and 10000")
    if tier not in ("open", "revenue_share", "partner_priced"):
        raise InvalidInput("tier must be open, revenue_share or partner_priced")
    pricing.parse_tiers(tiers)
    when = effective_from or utcnow()
    _check_not_in_closed_period(session, when)
    license_ = License(model_id=model.id, tier=tier, licensor=licensor, royalty_bps=royalty_bps,
                       platform_fee_bps=platform_fee_bps, royalty_per_unit_micros=royalty_per_unit_micros,
                       included_units=Decimal(included_units), minimum_fee_micros=minimum_fee_micros,
                       hosting_fee_per_gpu_second_micros=hosting_fee_per_gpu_second_micros,
                       effective_from=when)
    card = PriceCard(model_id=model.id, version_id=version_id, unit=unit, unit_price_micros=unit_price_micros,
                     tiers=tiers or None, minimum_micros=minimum_micros, currency=currency, effective_from=when)
    session.add_all([license_, card])
    session.flush()
    return license_, card


def set_account_price(
    session: Session, model: Model, account: Account, *, unit: str, unit_price_micros: int,
    tiers: list[dict[str, Any]] | None = None, minimum_micros: int = 0, currency: str | None = None,
    effective_from: dt.datetime | None = None, ends_at: dt.datetime | None = None,
    version_id: str | None = None,
) -> PriceCard:
    """An enterprise contract: the account's own price for a model, over its other cards."""
    if unit not in BILLABLE_UNITS:
        raise InvalidInput(f"unit must be one of {', '.join(BILLABLE_UNITS)}")
    if unit_price_micros < 0 or minimum_micros < 0:
        raise InvalidInput("prices cannot be negative")
    pricing.parse_tiers(tiers)
    when = effective_from or utcnow()
    if ends_at is not None and ends_at <= when:
        raise InvalidInput("a contract must end after it starts")
    _check_not_in_closed_period(session, when)
    card = PriceCard(model_id=model.id, account_id=account.id, version_id=version_id, unit=unit,
                     unit_price_micros=unit_price_micros, tiers=tiers or None, minimum_micros=minimum_micros,
                     currency=currency or account.currency, effective_from=when, ends_at=ends_at)
    session.add(card)
    session.flush()
    return card


@dataclass(frozen=True)
class Pricing:
    license: License
    price_card: PriceCard


def pricing_at(session: Session, model_id: str, when: dt.datetime | None = None, *,
               version_id: str | None = None, account_id: str | None = None) -> Pricing:
    """The license and price card in force for a model at a time (for an account, if given)."""
    when = when or utcnow()
    book = PriceBook.load(session, {model_id})
    card = book.card(model_id, when, version_id=version_id, account_id=account_id)
    license_ = book.license(model_id, when)
    if license_ is None or card is None:
        raise NotFound("this model has no price card yet and cannot be called")
    return Pricing(license_, card)


@dataclass(frozen=True)
class Authorization:
    """A request may run: its pricing, estimated cost and (prepaid) credit left after holds.

    For a postpaid account enabled for commercial use there is nothing to check, and nothing
    is read: `pricing` is then None and the estimate 0.
    """

    pricing: Pricing | None
    estimate_micros: int
    available_micros: int | None


def _estimate(card: PriceCard, input_estimate: dict[str, Any] | None) -> int:
    quantity = Decimal(1)
    if input_estimate:
        checked = pricing.check_units(input_estimate)
        if card.unit in checked:
            quantity = pricing.billable_quantity(card.unit, checked)
    tiers = pricing.parse_tiers(card.tiers)
    # The first tier's price: an estimate must not depend on this month's volume so far.
    unit_price = tiers[0].unit_price_micros if tiers else card.unit_price_micros
    return pricing.charge_micros(quantity, unit_price_micros=unit_price, tiers=[],
                                 minimum_micros=card.minimum_micros)


def authorize_request(session: Session, account: Account, model_id: str,
                      input_estimate: dict[str, Any] | None = None, *,
                      version_id: str | None = None) -> Authorization:
    """Check before a request runs: priced, licensed for this account, and (prepaid) covered.

    Refuses with 403 when a revenue-share model's terms need commercial use the account is not
    enabled for, and with 402 when a prepaid account's credit, less what its queued and
    running requests are expected to cost, would not cover this one.
    """
    if account.billing_mode != "prepaid" and account.commercial_use:
        return Authorization(None, 0, None)  # the submit path stays free of extra queries
    now = utcnow()
    inflight = repo.inflight_by_model(session, account.id) if account.billing_mode == "prepaid" else []
    book = PriceBook.load(session, {model_id} | {m for m, _ in inflight})
    card = book.card(model_id, now, version_id=version_id, account_id=account.id)
    license_ = book.license(model_id, now)
    if card is None or license_ is None:
        raise NotFound("this model has no price card yet and cannot be called")
    if license_.tier == "revenue_share" and not account.commercial_use:
        raise Forbidden("this model's license allows commercial use only to accounts enabled for it; "
                        "ask us to enable commercial use on your account", type="commercial-use-required")
    estimate = _estimate(card, input_estimate)
    if account.billing_mode != "prepaid":
        return Authorization(Pricing(license_, card), estimate, None)
    held = 0
    for other, count in inflight:
        other_card = book.card(other, now, account_id=account.id)
        held += count * (_estimate(other_card, None) if other_card is not None else 0)
    available = repo.credit_balance(session, account.id) - held
    if available < estimate:
        raise PaymentRequired(
            f"prepaid credit left ({format_micros(max(available, 0), card.currency)}) does not cover "
            f"this request (about {format_micros(estimate, card.currency)}); top up to continue",
            type="insufficient-credit", available_micros=available, required_micros=estimate)
    return Authorization(Pricing(license_, card), estimate, available)


def record_usage(
    session: Session, *, request_id: str, account_id: str, model: Model, version_id: str,
    units: dict[str, Any], occurred_at: dt.datetime, status: str = "succeeded",
) -> UsageRecord:
    """Charge a succeeded request once: a usage record plus its balanced ledger postings.

    Safe to call twice for the same request: the second call finds the first record. Usage
    whose month already closed is booked in the next open period as an adjustment.
    """
    if status != "succeeded":
        raise InvalidInput(f"only succeeded requests are charged, this one is {status}")
    charged = charge_request(session, UsageItem(request_id, account_id, model.id, model.partner_id, version_id,
                                                units, occurred_at))
    record = session.get(UsageRecord, charged.usage_id)
    if record is None:  # pragma: no cover - the charge was written in this transaction
        raise Conflict("the usage could not be recorded")
    return record


def record_usage_batch(session: Session, items: list[UsageItem]) -> int:
    """Charge many succeeded requests in one go (bulk ingestion); how many were new."""
    return len(record_batch(session, items))


def post_transaction(session: Session, legs: list[tuple[str, int]], *, currency: str, kind: str,
                     period: str, ref: str | None = None, usage_id: str | None = None,
                     memo: str = "") -> str:
    """Append one balanced transaction; refuses legs that do not sum to zero."""
    if sum(amount for _, amount in legs) != 0:
        raise ValueError(f"unbalanced {kind} transaction: {legs}")
    txn, now = new_id("txn"), utcnow()
    repo.add_entries(session, [
        {"id": new_id("led"), "transaction_id": txn, "ledger_account": name, "amount_micros": amount,
         "currency": currency, "period": period, "kind": kind, "usage_id": usage_id, "ref": ref,
         "memo": memo[:200], "created_at": now}
        for name, amount in legs])
    return txn


def open_period(session: Session, when: dt.datetime | None = None) -> str:
    """The period something happening now is booked in."""
    return booking_period(session, periods.period_of(when or utcnow()))


def refund_usage(session: Session, usage_id: str, *, amount_micros: int | None = None,
                 reason: str = "", when: dt.datetime | None = None) -> Refund:
    """Give back all or part of a charge: a reversing transaction in the open period.

    Each party gives back its share of the charge; a partner paid out already is clawed back
    on its next statement, since the reversal lands in the period being accrued now.
    """
    usage = repo.usage_for_update(session, usage_id)
    if usage is None:
        raise NotFound(f"no usage record {usage_id}")
    refunded = repo.refunded_total(session, usage.id)
    left = usage.amount_micros - refunded
    amount = left if amount_micros is None else amount_micros
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput("a refund must be a positive whole number of micro-units")
    if amount > left:
        raise InvalidInput(f"only {left} micro-units of this charge are left to refund")
    part = ledger.split_refund(ledger.Split(usage.platform_micros, usage.royalty_micros, usage.partner_micros),
                               refunded_before=refunded, amount=amount)
    customer = (repo.customer_leg(session, usage.transaction_id) if usage.transaction_id else None) \
        or ledger.customer_receivable(usage.account_id)
    legs = [(name, -amt) for name, amt in ledger.legs_for(part, customer=customer, licensor=usage.licensor or "",
                                                          partner_id=usage.partner_id)]
    period = open_period(session, when)
    refund = Refund(usage_id=usage.id, account_id=usage.account_id, model_id=usage.model_id,
                    partner_id=usage.partner_id, licensor=usage.licensor, amount_micros=amount,
                    platform_micros=part.platform, royalty_micros=part.royalty, partner_micros=part.partner,
                    currency=usage.currency, period=period, reason=reason[:500], transaction_id="")
    refund.id = new_id("rfd")
    refund.transaction_id = post_transaction(
        session, legs, currency=usage.currency, kind="refund", period=period, ref=refund.id,
        usage_id=usage.id, memo=f"refund of {usage.request_id}, reverses {usage.transaction_id}")
    session.add(refund)
    session.flush()
    return refund


def reverse_transaction(session: Session, transaction_id: str, *, reason: str) -> str:
    """Correct a posted transaction by posting its exact opposite in the open period.

    Usage charges are corrected through `refund_usage`, so refunds stay itemised.
    """
    entries = repo.entries_of(session, transaction_id)
    if not entries:
        raise NotFound(f"no transaction {transaction_id}")
    if entries[0].kind == "usage" and entries[0].usage_id:
        return refund_usage(session, entries[0].usage_id, reason=reason).transaction_id
    if entries[0].kind == "correction" or repo.has_transaction(session, kind="correction", ref=transaction_id):
        raise Conflict(f"transaction {transaction_id} was already reversed or is itself a reversal")
    return post_transaction(session, [(e.ledger_account, -e.amount_micros) for e in entries],
                            currency=entries[0].currency, kind="correction", period=open_period(session),
                            ref=transaction_id, memo=f"reverses {transaction_id}: {reason}")


def credit_balance(session: Session, account_id: str) -> int:
    """A prepaid account's spendable credit in micro-units."""
    return repo.credit_balance(session, account_id)


def ensure_payee(session: Session, kind: str, ref: str, *, name: str = "", report_url: str | None = None,
                 report_token: str | None = None, stripe_account_id: str | None = None) -> Payee:
    """The payee row of a partner (by id) or licensor (by slug), created or updated."""
    if kind not in ("partner", "licensor"):
        raise InvalidInput("a payee is a partner or a licensor")
    payee = repo.payee(session, kind, ref)
    if payee is None:
        partner = session.get(Partner, ref) if kind == "partner" else None
        if kind == "partner" and partner is None:
            raise NotFound(f"no partner {ref}")
        payee = Payee(kind=kind, ref=ref, name=name or (partner.name if partner else ref))
        session.add(payee)
    if name:
        payee.name = name
    if report_url is not None:
        payee.report_url = report_url
    if report_token is not None:
        payee.report_token = report_token
    if stripe_account_id is not None:
        payee.stripe_account_id = stripe_account_id
    session.flush()
    return payee


def add_pool_contract(session: Session, account: Account, *, pool: str, monthly_fee_micros: int,
                      latency_target_ms: int, effective_from: dt.datetime | None = None) -> PoolContract:
    """A dedicated pool for an account: a monthly fee and a latency SLA."""
    if monthly_fee_micros < 0 or latency_target_ms <= 0:
        raise InvalidInput("a pool contract needs a non-negative fee and a positive latency target")
    contract = PoolContract(account_id=account.id, pool=pool, monthly_fee_micros=monthly_fee_micros,
                            latency_target_ms=latency_target_ms, currency=account.currency,
                            effective_from=effective_from or utcnow())
    session.add(contract)
    session.flush()
    return contract


def usage_summary(session: Session, account_id: str, *, since: dt.datetime, until: dt.datetime) -> list[dict[str, Any]]:
    """The account's usage and cost by model and day."""
    return [
        {"model": f"{owner}/{slug}", "day": str(day), "meter": meter, "currency": currency,
         "requests": count, "quantity": float(quantity), "amount_micros": int(amount)}
        for owner, slug, day, meter, currency, count, quantity, amount
        in repo.usage_by_model_and_day(session, account_id, since, until)
    ]


REPORT_COLUMNS = ("partner", "model", "license_tier", "licensor", "currency", "requests",
                  "gross_micros", "refunds_micros", "platform_micros", "royalty_micros", "partner_micros")


def revenue_share_report(session: Session, period: str) -> list[dict[str, Any]]:
    """Per partner and model: gross charged, refunds, and what platform, licensor and partner got.

    Shares are net of refunds: gross − refunds = platform + royalty + partner.
    """
    periods.check(period)
    return [
        dict(zip(REPORT_COLUMNS, (partner, model, tier, licensor or partner, currency, int(count),
                                  int(gross), int(refunds), int(platform), int(royalty), int(partner_leg)),
                 strict=True))
        for partner, model, tier, licensor, currency, count, gross, platform, royalty, partner_leg, refunds
        in repo.revenue_share_rows(session, period)
    ]


def ledger_is_balanced(session: Session) -> bool:
    """Every transaction sums to zero."""
    return not repo.unbalanced_transactions(session)

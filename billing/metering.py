"""Metering: price reported units and post each charge's balanced ledger legs, in batches.

One path serves the gateway (a batch of one, per succeeded request) and bulk ingestion
(thousands per call): the same price book, counters, booking periods and postings.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import ledger, periods, pricing
from billing import repository as repo
from billing.models import Account, License, PriceCard, UsageRecord
from kit.db import utcnow
from kit.errors import Conflict, InvalidInput, NotFound
from kit.ids import new_id


@dataclass(frozen=True)
class UsageItem:
    """One succeeded request's reported units, as the gateway hands them over."""

    request_id: str
    account_id: str
    model_id: str
    partner_id: str
    version_id: str
    units: dict[str, Any]
    occurred_at: dt.datetime


@dataclass
class PriceBook:
    """Every price card and license of some models, resolved in memory by time.

    The most specific card in force wins: an account's own card (an enterprise contract),
    then a version's, then the model's; among equals the newest effective one.
    """

    cards: dict[str, list[Any]] = field(default_factory=dict)
    licenses: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, model_ids: set[str], *, snapshot: bool = False) -> PriceBook:
        """The cards and licenses of some models; `snapshot` copies them into plain objects.

        Metering reads a card's fields thousands of times per batch: plain attributes cost
        a fraction of the ORM's instrumented ones, and tiers are parsed once.
        """
        book = cls({m: [] for m in model_ids}, {m: [] for m in model_ids})
        if model_ids:
            for card in session.scalars(select(PriceCard).where(PriceCard.model_id.in_(model_ids))):
                book.cards[card.model_id].append(_snapshot(card, tiers=pricing.parse_tiers(card.tiers))
                                                 if snapshot else card)
            for lic in session.scalars(select(License).where(License.model_id.in_(model_ids))):
                book.licenses[lic.model_id].append(
                    _snapshot(lic, included_units=Decimal(lic.included_units or 0)) if snapshot else lic)
        return book

    def card(self, model_id: str, when: dt.datetime, *, version_id: str | None = None,
             account_id: str | None = None) -> PriceCard | None:
        best, best_key = None, None
        for c in self.cards.get(model_id, ()):
            if c.effective_from > when or (c.ends_at is not None and c.ends_at <= when):
                continue
            if (c.version_id and c.version_id != version_id) or (c.account_id and c.account_id != account_id):
                continue
            key = (c.account_id is not None, c.version_id is not None, c.effective_from, c.id)
            if best_key is None or key > best_key:
                best, best_key = c, key
        return best

    def license(self, model_id: str, when: dt.datetime) -> License | None:
        in_force = [lic for lic in self.licenses.get(model_id, ()) if lic.effective_from <= when]
        return max(in_force, key=lambda lic: (lic.effective_from, lic.id), default=None)


def _snapshot(row: Any, **overrides: Any) -> SimpleNamespace:
    values = {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs}
    return SimpleNamespace(**{**values, **overrides})


_ALPHABET = b"0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM_CHAR = bytes(_ALPHABET[b & 31] for b in range(256))


def bulk_ids(prefix: str, n: int) -> list[str]:
    """`n` ids in `kit.ids.new_id`'s format: this millisecond, then 80 fresh random bits each.

    Bulk ingestion makes several ids per record; drawing the random characters with one
    `bytes.translate` instead of a Python loop per id is a tenth of the cost.
    """
    head = new_id(prefix)[: len(prefix) + 11]  # "prefix_" and the 10 time characters
    chars = os.urandom(16 * n).translate(_RANDOM_CHAR).decode()
    return [head + chars[16 * i:16 * i + 16] for i in range(n)]


def booking_period(session: Session, event_period: str) -> str:
    """The open period a charge that happened in `event_period` is booked in.

    Its own month while that is open; after it closed, the month after the last closed one
    (late usage becomes an adjustment there). A share lock on the period row makes a
    concurrent close wait for this transaction, so nothing lands in a frozen period.
    """
    for _ in range(8):
        last_closed = repo.latest_closed_period(session)
        target = event_period if last_closed is None or event_period > last_closed else periods.next_period(last_closed)
        if repo.lock_period_shared(session, target) == "open":
            return target
    raise Conflict("the billing period is being closed; retry")  # pragma: no cover - needs a close storm


@dataclass
class _Priced:
    item: UsageItem
    card: Any
    license: Any
    billing_mode: str
    checked: dict[str, Decimal]
    quantity: Decimal
    billable: Decimal
    event_period: str
    period: str = ""
    tier_key: tuple[str, str, str] | None = None
    royalty_key: tuple[str, str, str] | None = None


def price_item(book: PriceBook, item: UsageItem, billing_mode: str | None,
               month_names: dict[tuple[int, int], str] | None = None) -> _Priced:
    """One item's card, license, checked units and billable quantity (422/404 when unusable)."""
    if item.occurred_at.tzinfo is None:
        raise InvalidInput("occurred_at must be timezone-aware")
    if billing_mode is None:
        raise NotFound(f"no account {item.account_id}")
    checked = pricing.check_units(item.units)
    card = book.card(item.model_id, item.occurred_at, version_id=item.version_id, account_id=item.account_id)
    lic = book.license(item.model_id, item.occurred_at)
    if card is None or lic is None:
        raise NotFound("this model has no price card yet and cannot be called")
    if card.unit not in checked:
        raise InvalidInput(f"the model reported no {card.unit!r} units")
    when = item.occurred_at.astimezone(dt.UTC)
    month = (when.year, when.month)
    names = month_names if month_names is not None else {}
    if month not in names:
        names[month] = f"{when.year:04d}-{when.month:02d}"
    return _Priced(item, card, lic, billing_mode, checked, checked[card.unit],
                   pricing.billable_quantity(card.unit, checked), names[month])


def _price_items(session: Session, items: list[UsageItem]) -> list[_Priced]:
    book = PriceBook.load(session, {i.model_id for i in items}, snapshot=True)
    account_ids = {i.account_id for i in items}
    modes = dict(session.execute(select(Account.id, Account.billing_mode).where(Account.id.in_(account_ids))).all())
    month_names: dict[tuple[int, int], str] = {}
    return [price_item(book, item, modes.get(item.account_id), month_names) for item in items]


def charge_rows(p: _Priced, *, tier_start: Decimal, royalty_start: Decimal, usage_id: str, txn: str,
                leg_ids: Iterator[str], now: dt.datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A priced item's usage row and its balanced ledger legs (booked in `p.period`)."""
    card, lic = p.card, p.license
    amount = pricing.charge_micros(p.billable, unit_price_micros=card.unit_price_micros,
                                   tiers=card.tiers, already=tier_start,
                                   minimum_micros=card.minimum_micros)
    unit_royalty = 0
    if lic.tier == "revenue_share" and lic.royalty_per_unit_micros:
        unit_royalty = pricing.unit_royalty(p.billable, per_unit_micros=lic.royalty_per_unit_micros,
                                            included=lic.included_units, already=royalty_start)
    hosting = 0
    if lic.tier == "partner_priced":
        hosting = pricing.hosting_fee(p.checked.get("gpu_seconds", Decimal(0)),
                                      lic.hosting_fee_per_gpu_second_micros)
    split = ledger.split_charge(amount, tier=lic.tier, royalty_bps=lic.royalty_bps,
                                platform_fee_bps=lic.platform_fee_bps, unit_royalty=unit_royalty,
                                hosting_fee=hosting)
    # A revenue-share royalty with no named licensor is owed to the model's partner.
    licensor = (lic.licensor or p.item.partner_id) if lic.tier == "revenue_share" else lic.licensor
    usage = {
        "id": usage_id, "request_id": p.item.request_id, "meter": card.unit, "quantity": p.quantity,
        "billable_quantity": p.billable, "account_id": p.item.account_id, "model_id": p.item.model_id,
        "partner_id": p.item.partner_id, "version_id": p.item.version_id, "price_card_id": card.id,
        "license_id": lic.id, "tier": lic.tier, "billing_mode": p.billing_mode, "licensor": licensor,
        "amount_micros": amount, "platform_micros": split.platform, "royalty_micros": split.royalty,
        "partner_micros": split.partner, "currency": card.currency, "period": p.period,
        "event_period": p.event_period, "occurred_at": p.item.occurred_at, "ingested_at": now,
        "units": p.item.units, "transaction_id": txn,
    }
    customer = ledger.customer_account(p.item.account_id, p.billing_mode)
    # Usage legs point at their usage record; only late ones say more.
    memo = f"late usage from {p.event_period}" if p.period != p.event_period else ""
    legs = [{"id": next(leg_ids), "transaction_id": txn, "ledger_account": name, "amount_micros": amt,
             "currency": card.currency, "period": p.period, "kind": "usage", "usage_id": usage_id,
             "ref": None, "memo": memo, "created_at": now}
            for name, amt in ledger.legs_for(split, customer=customer, licensor=licensor or "",
                                             partner_id=p.item.partner_id)]
    return usage, legs


def record_batch(session: Session, items: list[UsageItem]) -> dict[str, str]:
    """Charge each item once; returns request id → usage id for the records written now.

    Requests already charged are skipped (replays are free). Counters behind volume tiers
    and included volume are locked in a fixed order and advanced in event-time order.
    """
    if not items:
        return {}
    priced = _price_items(session, items)
    already_charged = _charged_requests(session, [p.item.request_id for p in priced])
    fresh, in_batch = [], set()
    for p in sorted(priced, key=lambda p: (p.item.occurred_at, p.item.request_id)):
        if p.item.request_id in already_charged or p.item.request_id in in_batch:
            continue
        in_batch.add(p.item.request_id)
        fresh.append(p)
    booking = {ep: booking_period(session, ep) for ep in sorted({p.event_period for p in fresh})}
    bumps: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for p in fresh:
        p.period = booking[p.event_period]
        if p.card.tiers:
            p.tier_key = ("account", f"{p.item.account_id}:{p.item.model_id}", p.period)
            bumps[p.tier_key] += p.billable
        if p.license.tier == "revenue_share" and p.license.royalty_per_unit_micros and p.license.included_units:
            p.royalty_key = ("licensed", p.item.model_id, p.period)
            bumps[p.royalty_key] += p.billable
    totals = repo.bump_counters(session, [(*k, q) for k, q in bumps.items()]) if bumps else {}
    running = {k: totals[k] - q for k, q in bumps.items()}

    now = utcnow()
    usage_rows, entry_rows, by_request, undo = [], [], {}, []
    ids = iter(bulk_ids("use", len(fresh)))
    txns = iter(bulk_ids("txn", len(fresh)))
    legs = iter(bulk_ids("led", 4 * len(fresh)))
    for p in fresh:
        tier_start = royalty_start = Decimal(0)
        if p.tier_key:
            tier_start = running[p.tier_key]
            running[p.tier_key] += p.billable
        if p.royalty_key and p.license.tier == "revenue_share" and p.license.royalty_per_unit_micros:
            royalty_start = running[p.royalty_key]
            running[p.royalty_key] += p.billable
        usage, entries_of_one = charge_rows(p, tier_start=tier_start, royalty_start=royalty_start,
                                            usage_id=next(ids), txn=next(txns), leg_ids=legs, now=now)
        usage_rows.append(usage)
        entry_rows.append(entries_of_one)
        by_request[p.item.request_id] = usage["id"]
        undo.append([(k, p.billable) for k in (p.tier_key, p.royalty_key) if k])

    written = repo.insert_usages(session, usage_rows)
    entries, lost = [], defaultdict(Decimal)
    for row, legs, bumps_of in zip(usage_rows, entry_rows, undo, strict=True):
        if row["id"] in written:
            entries.extend(legs)
        else:  # a concurrent transaction charged this request first: give the units back
            by_request.pop(row["request_id"], None)
            for key, q in bumps_of:
                lost[key] -= q
    if lost:
        repo.bump_counters(session, [(*k, q) for k, q in lost.items()])
    repo.add_entries(session, entries)
    return by_request


def _charged_requests(session: Session, request_ids: list[str]) -> set[str]:
    """Which of these requests already have a usage record."""
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter instead of thousands of IN placeholders to render and parse;
        # never a prepared generic plan, which cannot see the array's size and scans the table.
        with session.connection().connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("SELECT request_id FROM usage_records WHERE request_id = ANY(%s)", [request_ids],
                        prepare=False)
            return {r[0] for r in cur.fetchall()}
    found: set[str] = set()
    for start in range(0, len(request_ids), 5_000):
        chunk = request_ids[start:start + 5_000]
        found.update(session.scalars(select(UsageRecord.request_id).where(UsageRecord.request_id.in_(chunk))))
    return found

"""Charging one succeeded request on the gateway's finish path: one read, one write.

`metering.record_batch` serves any batch in a dozen statements. A single request on
PostgreSQL needs two: one SELECT that reads the account's billing mode, the booking period
(share-locked, so a close waits for this transaction), an earlier charge of the request,
and a fingerprint of the model's price cards and licenses; then one INSERT that writes the
usage record, its ledger legs and any prepaid credit move together, or nothing when the
request was charged already (the unique (request_id, meter) index decides a race).

The price book is kept per process and reused while the fingerprint, computed by the
database from every column of every card and license of the model, is unchanged: a new or
edited price applies from the first request after it commits, as without the cache.
Volume tiers and per-unit royalties advance shared counters; those charges, late usage
and other databases take the general path.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg.types.json import Json
from sqlalchemy.orm import Session

from billing import ledger
from billing import repository as repo
from billing.metering import PriceBook, UsageItem, bulk_ids, charge_rows, price_item, record_batch
from kit.db import utcnow
from kit.errors import Conflict


@dataclass(frozen=True)
class Charged:
    """What a request was charged: its usage record and amount."""

    usage_id: str
    amount_micros: int


_READ = """
WITH p AS (SELECT status FROM billing_periods WHERE period = %(period)s FOR SHARE)
SELECT (SELECT billing_mode FROM accounts WHERE id = %(account)s),
       (SELECT max(period) FROM billing_periods WHERE status IN ('closing', 'closed')),
       (SELECT status FROM p),
       (SELECT id FROM usage_records WHERE request_id = %(request)s ORDER BY id LIMIT 1),
       (SELECT amount_micros FROM usage_records WHERE request_id = %(request)s ORDER BY id LIMIT 1),
       (SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) FROM price_cards c WHERE c.model_id = %(model)s),
       (SELECT md5(string_agg(l::text, ',' ORDER BY l.id)) FROM licenses l WHERE l.model_id = %(model)s)
"""

_USAGE_VALUES = ", ".join(f"%({c})s" for c in repo.USAGE_COLUMNS)
_WRITE = f"""
WITH u AS (
    INSERT INTO usage_records ({", ".join(repo.USAGE_COLUMNS)}) VALUES ({_USAGE_VALUES})
    ON CONFLICT (request_id, meter) DO NOTHING RETURNING id
), l AS (
    INSERT INTO ledger_entries (id, transaction_id, ledger_account, amount_micros, currency, period,
                                kind, usage_id, ref, memo, created_at)
    SELECT t.id, %(transaction_id)s, t.account, t.amount, %(currency)s, %(period)s, 'usage', u.id,
           NULL, %(memo)s, %(ingested_at)s
    FROM u, unnest(%(leg_ids)s::varchar[], %(leg_accounts)s::varchar[], %(leg_amounts)s::bigint[])
         AS t(id, account, amount)
), c AS (
    INSERT INTO credit_balances (account_id, currency, balance_micros, updated_at)
    SELECT t.holder, t.currency, t.move, %(ingested_at)s
    FROM u, unnest(%(move_holders)s::varchar[], %(move_currencies)s::varchar[], %(moves)s::bigint[])
         AS t(holder, currency, move)
    ON CONFLICT (account_id) DO UPDATE SET balance_micros = credit_balances.balance_micros
        + excluded.balance_micros, updated_at = excluded.updated_at
)
SELECT id FROM u
"""

_books: dict[str, tuple[tuple[str | None, str | None], PriceBook]] = {}
_lock = threading.Lock()
MAX_BOOKS = 10_000


def _book(session: Session, model_id: str, fingerprint: tuple[str | None, str | None]) -> PriceBook:
    hit = _books.get(model_id)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    book = PriceBook.load(session, {model_id}, snapshot=True)
    with _lock:
        if len(_books) >= MAX_BOOKS:
            _books.clear()
        _books[model_id] = (fingerprint, book)
    return book


def charge_request(session: Session, item: UsageItem) -> Charged:
    """Charge a succeeded request once (usage record + balanced legs); a replay returns the
    first charge. Raises InvalidInput/NotFound, before writing anything, for unusable units
    or a model without a price."""
    if session.get_bind().dialect.name != "postgresql" or item.occurred_at.tzinfo is None:
        return _general(session, item)
    event_period = item.occurred_at.astimezone(dt.UTC).strftime("%Y-%m")
    raw = session.connection().connection.dbapi_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(_READ, {"period": event_period, "account": item.account_id, "request": item.request_id,
                            "model": item.model_id})
        mode, last_closed, status, usage_id, amount, cards, licenses = cur.fetchone()
    if usage_id is not None:
        return Charged(usage_id, int(amount))
    priced = price_item(_book(session, item.model_id, (cards, licenses)), item, mode)
    counters = bool(priced.card.tiers) or (priced.license.tier == "revenue_share"
                                           and bool(priced.license.royalty_per_unit_micros)
                                           and bool(priced.license.included_units))
    in_open_month = status == "open" and (last_closed is None or priced.event_period > last_closed)
    if counters or not in_open_month:
        return _general(session, item)
    priced.period = event_period
    [usage_id], [txn] = bulk_ids("use", 1), bulk_ids("txn", 1)
    usage, legs = charge_rows(priced, tier_start=Decimal(0), royalty_start=Decimal(0), usage_id=usage_id,
                              txn=txn, leg_ids=iter(bulk_ids("led", 4)), now=utcnow())
    moves: dict[tuple[str, str], int] = defaultdict(int)
    for leg in legs:
        holder = ledger.credit_account_holder(leg["ledger_account"])
        if holder is not None:
            moves[(holder, leg["currency"])] -= leg["amount_micros"]
    params: dict[str, Any] = {
        **usage, "units": Json(usage["units"]), "memo": legs[0]["memo"],
        "leg_ids": [leg["id"] for leg in legs], "leg_accounts": [leg["ledger_account"] for leg in legs],
        "leg_amounts": [leg["amount_micros"] for leg in legs],
        "move_holders": [h for h, _ in moves], "move_currencies": [c for _, c in moves],
        "moves": list(moves.values()),
    }
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(_WRITE, params)
        written = cur.fetchone()
    if written is None:  # a concurrent transaction charged this request first
        return _existing(session, item.request_id)
    return Charged(usage_id, usage["amount_micros"])


def _general(session: Session, item: UsageItem) -> Charged:
    with session.begin_nested():  # a refusal leaves nothing behind (e.g. a period row it made)
        record_batch(session, [item])
    return _existing(session, item.request_id)


def _existing(session: Session, request_id: str) -> Charged:
    records = repo.usage_of_request(session, request_id)
    if not records:  # pragma: no cover - record_batch raises before this can happen
        raise Conflict("the usage could not be recorded")
    return Charged(records[0].id, records[0].amount_micros)

"""Charging one request on the finish path: once, balanced, at the price in force, in two
statements once the month's period exists and the model's price book is known."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from billing import service as billing
from billing.charge import charge_request
from billing.metering import UsageItem
from billing.models import BillingPeriod, CreditBalance, LedgerEntry, UsageCounter, UsageRecord
from kit.errors import InvalidInput
from tests.billing import factories as f

WHEN = f.at("2025-03")


def _item(account, model, request_id: str, units=None, when: dt.datetime = WHEN) -> UsageItem:  # type: ignore[no-untyped-def]
    return UsageItem(request_id, account.id, model.id, model.partner_id, "ver_test", units or {"images": 1}, when)


@contextmanager
def _orm_statements(db: Session) -> Iterator[list[str]]:
    """Statements that went through SQLAlchemy (the fast path writes on the raw connection)."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        seen.append(statement)

    engine = db.get_bind().engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _legs(db: Session, usage_id: str) -> list[LedgerEntry]:
    return list(db.scalars(select(LedgerEntry).where(LedgerEntry.usage_id == usage_id)))


def test_a_request_is_charged_once_with_balanced_legs_and_a_replay_returns_the_first_charge(db: Session) -> None:
    owner = f.partner(db)
    model = f.model(db, owner, tier="revenue_share", royalty_bps=2000, price=50_000)
    account = f.account(db)
    charge_request(db, _item(account, model, "req_warm"))  # makes the month's period and learns the prices
    with _orm_statements(db) as seen:
        first = charge_request(db, _item(account, model, "req_once", {"images": 2}))
    assert seen == []  # one read and one write on the connection itself: no general path
    again = charge_request(db, _item(account, model, "req_once", {"images": 2}))
    assert again == first and first.amount_micros == 100_000
    [record] = db.scalars(select(UsageRecord).where(UsageRecord.request_id == "req_once"))
    assert (record.id, record.period, record.royalty_micros, record.platform_micros) == (
        first.usage_id, "2025-03", 20_000, 80_000)
    legs = _legs(db, record.id)
    assert sum(leg.amount_micros for leg in legs) == 0 and len(legs) == 3
    assert {leg.transaction_id for leg in legs} == {record.transaction_id}
    assert {leg.ledger_account: leg.amount_micros for leg in legs} == {
        f"customer:{account.id}:receivable": 100_000, "platform:revenue": -80_000,
        f"licensor:{owner.id}:royalty_payable": -20_000}


def test_a_prepaid_charge_draws_the_credit_balance_down_in_the_same_statement(db: Session) -> None:
    model = f.model(db, f.partner(db), price=30_000)
    account = f.account(db, mode="prepaid")
    charge_request(db, _item(account, model, "req_p1"))
    charge_request(db, _item(account, model, "req_p2"))
    charge_request(db, _item(account, model, "req_p2"))  # a replay moves nothing
    balance = db.scalar(select(CreditBalance.balance_micros).where(CreditBalance.account_id == account.id))
    assert balance == -60_000
    usage = db.scalar(select(UsageRecord.id).where(UsageRecord.request_id == "req_p2"))
    assert {leg.ledger_account for leg in _legs(db, usage)} == {f"customer:{account.id}:credit", "platform:revenue"}


def test_a_new_price_applies_from_the_next_charge_though_the_book_was_cached(db: Session) -> None:
    model = f.model(db, f.partner(db), price=10_000)
    account = f.account(db)
    assert charge_request(db, _item(account, model, "req_old")).amount_micros == 10_000
    billing.set_pricing(db, model, tier="open", unit="images", unit_price_micros=25_000,
                        effective_from=WHEN - dt.timedelta(days=1))
    assert charge_request(db, _item(account, model, "req_new")).amount_micros == 25_000


def test_tiered_cards_and_closed_months_take_the_general_path(db: Session) -> None:
    tiers = [{"up_to": 2, "unit_price_micros": 1_000}, {"up_to": None, "unit_price_micros": 500}]
    model = f.model(db, f.partner(db), tiers=tiers)
    account = f.account(db)
    amounts = [charge_request(db, _item(account, model, f"req_t{i}", {"images": 2})).amount_micros
               for i in range(2)]
    assert amounts == [2_000, 1_000]  # the counter behind the tiers advanced
    assert db.scalar(select(func.sum(UsageCounter.quantity))) == 4
    plain = f.model(db, f.partner(db), price=7)
    db.get(BillingPeriod, "2025-03").status = "closed"
    db.flush()
    late = charge_request(db, _item(account, plain, "req_late"))
    assert db.get(UsageRecord, late.usage_id).period == "2025-04"


def test_unusable_units_are_refused_before_anything_is_written(db: Session) -> None:
    model = f.model(db, f.partner(db))
    account = f.account(db)
    for units in ({"images": -1}, {"seconds": 3}):
        with pytest.raises(InvalidInput):
            charge_request(db, _item(account, model, "req_bad", units, when=f.at("2025-07")))
    assert db.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert db.get(BillingPeriod, "2025-07") is None

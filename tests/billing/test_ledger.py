"""Charges split by license tier into balanced ledger postings, recorded once per request."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import ledger
from billing import service as billing
from billing.models import LedgerEntry, UsageRecord
from kit.db import utcnow
from partners import service as partners


@given(amount=st.integers(0, 10**12), tier=st.sampled_from(["open", "revenue_share", "partner_priced"]),
       bps=st.integers(0, 10_000))
def test_every_micro_lands_in_exactly_one_place(amount: int, tier: str, bps: int) -> None:
    split = ledger.split_charge(amount, tier=tier, royalty_bps=bps, platform_fee_bps=bps)
    assert split.total == amount and min(split.platform, split.royalty, split.partner) >= 0
    legs = ledger.postings(split, account_id="acc_1", licensor="bfl", partner_id="par_1")
    assert sum(a for _, a in legs) == 0


def _world(db: Session, tier: str = "revenue_share"):  # type: ignore[no-untyped-def]
    partner, _ = partners.create_partner(db, slug="bfl-labs", name="BFL")
    model = partners.create_model(db, partner, slug="flux-dev")
    billing.set_pricing(db, model, tier=tier, unit="megapixels", unit_price_micros=25_000,
                        licensor="bfl", royalty_bps=1_000, platform_fee_bps=2_500,
                        effective_from=utcnow() - dt.timedelta(days=1))
    account = billing.create_account(db, name="Customer")
    return partner, model, account


def test_usage_is_recorded_once_per_request(db: Session) -> None:
    _, model, account = _world(db)
    for _ in range(3):
        record = billing.record_usage(db, request_id="req_a", account_id=account.id, model=model,
                                      version_id="ver_x", units={"megapixels": 2}, occurred_at=utcnow())
    assert record.amount_micros == 50_000
    assert db.scalar(select(func.count()).select_from(UsageRecord)) == 1
    assert db.scalar(select(func.count()).select_from(LedgerEntry)) == 3  # customer, platform, licensor
    assert billing.ledger_is_balanced(db)


def test_price_changes_never_reprice_the_past(db: Session) -> None:
    _, model, account = _world(db, tier="open")
    before = utcnow()
    billing.set_pricing(db, model, tier="open", unit="megapixels", unit_price_micros=99_000,
                        effective_from=before + dt.timedelta(seconds=1))
    old = billing.record_usage(db, request_id="req_old", account_id=account.id, model=model,
                               version_id="v", units={"megapixels": 1}, occurred_at=before)
    new = billing.record_usage(db, request_id="req_new", account_id=account.id, model=model,
                               version_id="v", units={"megapixels": 1},
                               occurred_at=before + dt.timedelta(seconds=2))
    assert (old.amount_micros, new.amount_micros) == (25_000, 99_000)


def test_fractional_units_round_up_to_the_micro(db: Session) -> None:
    _, model, account = _world(db, tier="partner_priced")
    billing.set_pricing(db, model, tier="partner_priced", unit="video_seconds", unit_price_micros=333,
                        platform_fee_bps=2_500, effective_from=utcnow() - dt.timedelta(seconds=1))
    rec = billing.record_usage(db, request_id="req_v", account_id=account.id, model=model, version_id="v",
                               units={"video_seconds": 5.0625}, occurred_at=utcnow())
    assert rec.amount_micros == 1686  # ceil(5.0625 * 333 = 1685.8125)
    balances = dict(db.execute(select(LedgerEntry.ledger_account, LedgerEntry.amount_micros)).all())
    assert balances[ledger.PLATFORM_REVENUE] == -421 and sum(balances.values()) == 0


def test_report_lines_add_up(db: Session) -> None:
    partner, model, account = _world(db)
    now = utcnow()
    for i in range(5):
        billing.record_usage(db, request_id=f"req_{i}", account_id=account.id, model=model,
                             version_id="v", units={"megapixels": i + 1}, occurred_at=now)
    (row,) = billing.revenue_share_report(db, billing.period_of(now))
    assert row["requests"] == 5 and row["gross_micros"] == 15 * 25_000
    assert row["royalty_micros"] == row["gross_micros"] // 10
    assert row["platform_micros"] + row["royalty_micros"] + row["partner_micros"] == row["gross_micros"]


def test_bad_units_are_refused(db: Session) -> None:
    import pytest

    from kit.errors import InvalidInput

    _, model, account = _world(db)
    for units in ({"megapixels": -1}, {"megapixels": "nan"}, {"megapixels": float("inf")}, {"images": 1}):
        with pytest.raises(InvalidInput):
            billing.record_usage(db, request_id="req_bad", account_id=account.id, model=model,
                                 version_id="v", units=units, occurred_at=utcnow())

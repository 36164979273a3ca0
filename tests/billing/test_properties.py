"""Property tests: random sequences of usage, refunds, price changes and closes.

Whatever the sequence: every transaction balances, no micro-unit is created or lost,
statements and invoices reconcile to usage exactly, and closing again changes nothing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import ledger
from billing import repository as core_repo
from billing import service as billing
from billing.close import service as close
from billing.close.models import Invoice, Payout, Statement
from billing.models import BillingPeriod, LedgerEntry, Refund, UsageRecord
from billing.reports import service as reports
from kit.errors import InvalidInput
from kit.money import MICROS_PER_CENT
from tests.billing import factories as f

PERIODS = ["2024-01", "2024-02", "2024-03", "2024-04"]
TERMS = [
    {"tier": "open", "unit": "images"},
    {"tier": "revenue_share", "unit": "megapixels", "licensor": "bfl", "royalty_bps": 1_250,
     "royalty_per_unit_micros": 1_700, "included_units": 3},
    {"tier": "partner_priced", "unit": "video_seconds", "platform_fee_bps": 2_000,
     "hosting_fee_per_gpu_second_micros": 900},
]

use_op = st.tuples(st.just("use"), st.integers(0, 2), st.integers(0, 2), st.integers(0, len(PERIODS) - 1),
                   st.integers(1, 28), st.integers(0, 4), st.integers(0, 30_000))
refund_op = st.tuples(st.just("refund"), st.integers(0, 10_000), st.sampled_from([None, 1, 3, 7]))
price_op = st.tuples(st.just("price"), st.integers(0, 2), st.integers(0, 150_000), st.integers(0, len(PERIODS) - 1),
                     st.integers(1, 28))
close_op = st.just(("close",))
operations = st.lists(st.one_of(use_op, use_op, refund_op, refund_op, price_op, close_op), max_size=28)


def _units(model_index: int, images: int, thousandths: int) -> dict[str, Any]:
    if model_index == 0:
        return {"images": images}
    if model_index == 1:
        return {"megapixels": str(Decimal(thousandths) / 1000), "images": max(images, 1)}
    return {"video_seconds": str(Decimal(thousandths) / 1000), "gpu_seconds": str(Decimal(thousandths) / 700)}


def _snapshot(db: Session) -> tuple[Any, ...]:
    return tuple(db.scalar(select(func.count()).select_from(t)) for t in (LedgerEntry, Invoice, Statement, Payout)) + (
        db.scalar(select(func.sum(func.abs(LedgerEntry.amount_micros)))),)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(ops=operations, prices=st.lists(st.integers(0, 120_000), min_size=3, max_size=3))
def test_random_books_always_reconcile(db: Session, ops: list[tuple], prices: list[int]) -> None:
    savepoint = db.begin_nested()
    try:
        _run(db, ops, prices)
    finally:
        savepoint.rollback()


def _run(db: Session, ops: list[tuple], prices: list[int]) -> None:
    labs = [f.partner(db), f.partner(db)]
    models = [f.model(db, labs[i % 2], price=prices[i], effective_from=f.at("2023-12", day=1), **TERMS[i])
              for i in range(3)]
    billing.ensure_payee(db, "partner", labs[1].id, stripe_account_id="acct_partner")
    billing.ensure_payee(db, "licensor", "bfl", stripe_account_id="acct_bfl")
    accounts = [f.account(db), f.account(db), f.account(db, mode="prepaid")]
    usages: list[str] = []
    closed: list[str] = []

    def open_now() -> str:  # the simulation's "now": the first period not yet closed
        return PERIODS[len(closed)] if len(closed) < len(PERIODS) else "2024-05"

    for op in ops:
        if op[0] == "use":
            _, a, m, p, day, images, thousandths = op
            usages.append(f.use(db, accounts[a], models[m], f.at(PERIODS[p], day=day),
                                _units(m, images, thousandths)).id)
        elif op[0] == "refund" and usages:
            usage = db.get(UsageRecord, usages[op[1] % len(usages)])
            left = usage.amount_micros - core_repo.refunded_total(db, usage.id)
            if left > 0:
                amount = None if op[2] is None else max(1, left // op[2])
                billing.refund_usage(db, usage.id, amount_micros=amount, when=f.at(open_now(), day=28, hour=23))
        elif op[0] == "price":
            _, m, price, p, day = op
            try:
                billing.set_pricing(db, models[m], unit_price_micros=price, effective_from=f.at(PERIODS[p], day=day),
                                    **TERMS[m])
            except InvalidInput:
                assert closed and PERIODS[p] <= closed[-1], "only a closed period refuses a price change"
        elif op[0] == "close" and len(closed) < len(PERIODS):
            close.close_period(db, PERIODS[len(closed)])
            closed.append(PERIODS[len(closed)])

    late = db.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.period != UsageRecord.event_period))
    event(f"late usage: {'yes' if late else 'no'}")
    event(f"refunds: {'yes' if db.scalar(select(func.count()).select_from(Refund)) else 'no'}")
    event(f"closes during the run: {min(len(closed), 2)}+")
    # Close everything that was booked into, then check the books.
    last = db.scalar(select(func.max(BillingPeriod.period)))
    for period in PERIODS + (["2024-05"] if last and last > PERIODS[-1] else []):
        if period not in closed:
            close.close_period(db, period)
            closed.append(period)
    _check(db, closed, accounts, labs)


def _check(db: Session, closed: list[str], accounts: list, labs: list) -> None:  # type: ignore[type-arg]
    assert billing.ledger_is_balanced(db)
    assert db.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_micros), 0))) == 0

    # No micro-unit created or lost: every charge splits exactly, and the ledger holds it all.
    usage_total = refund_total = 0
    for u in db.scalars(select(UsageRecord)):
        assert u.platform_micros + u.royalty_micros + u.partner_micros == u.amount_micros
        usage_total += u.amount_micros
    given_back: dict[str, list[int]] = {}
    for r in db.scalars(select(Refund)):
        assert r.platform_micros + r.royalty_micros + r.partner_micros == r.amount_micros
        refund_total += r.amount_micros
        parts = given_back.setdefault(r.usage_id, [0, 0, 0, 0])
        for i, v in enumerate((r.amount_micros, r.platform_micros, r.royalty_micros, r.partner_micros)):
            parts[i] += v
    for usage_id, (amount, platform, royalty, partner) in given_back.items():
        u = db.get(UsageRecord, usage_id)
        assert amount <= u.amount_micros
        if amount == u.amount_micros:  # refunded in full, in however many pieces: the exact split comes back
            assert (platform, royalty, partner) == (u.platform_micros, u.royalty_micros, u.partner_micros)
    customer_legs = dict(db.execute(
        select(LedgerEntry.kind, func.sum(LedgerEntry.amount_micros))
        .where(LedgerEntry.ledger_account.startswith("customer:")).group_by(LedgerEntry.kind)).all())
    assert customer_legs.get("usage", 0) == usage_total and -customer_legs.get("refund", 0) == refund_total

    # Every closed period reconciles: invoices + draw-down = charges, payables = payouts + carry.
    for period in closed:
        recon = reports.reconciliation(db, period)
        assert recon["ok"], [c for c in recon["checks"] if not c["ok"]] + [r for r in recon["customers"] if not r["ok"]]

    # Over all periods, what customers were charged is what invoices and draw-downs hold, and
    # every invoiced micro is billed in whole cents or still carried.
    invoices = db.scalars(select(Invoice)).all()
    assert sum(i.total_micros for i in invoices) == usage_total - refund_total
    for account in accounts:
        own = sorted((i for i in invoices if i.account_id == account.id and i.kind == "invoice"), key=lambda i: i.period)
        for prev, nxt in zip(own, own[1:], strict=False):
            assert nxt.carried_in_micros == prev.carried_out_micros
        if own:
            assert sum(i.total_micros for i in own) == sum(i.amount_due_cents for i in own) * MICROS_PER_CENT \
                + own[-1].carried_out_micros
            assert core_repo.balances(db, ledger.customer_receivable(account.id)).get(
                ledger.customer_receivable(account.id), 0) == sum(i.total_micros for i in own)

    # Statements reconcile to usage exactly: what each payee earned is paid out or carried.
    usage_share = dict(db.execute(select(UsageRecord.partner_id, func.sum(UsageRecord.partner_micros))
                                  .group_by(UsageRecord.partner_id)).all())
    refund_share = dict(db.execute(select(Refund.partner_id, func.sum(Refund.partner_micros))
                                   .group_by(Refund.partner_id)).all())
    for lab in labs:
        payee = core_repo.payee(db, "partner", lab.id)
        stms = [] if payee is None else db.scalars(select(Statement).where(Statement.payee_id == payee.id)
                                                   .order_by(Statement.period)).all()
        earned = int(usage_share.get(lab.id, 0) or 0) - int(refund_share.get(lab.id, 0) or 0)
        assert sum(s.net_micros for s in stms) == earned
        if stms:
            assert earned == sum(s.payout_cents for s in stms) * MICROS_PER_CENT + stms[-1].carried_out_micros

    # Closing again changes nothing.
    before = _snapshot(db)
    for period in closed:
        assert close.close_period(db, period).already_closed
    assert _snapshot(db) == before

"""Period close: invoices, statements, payouts, late usage, clawbacks, carries, SLA credits."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import ledger
from billing import repository as core_repo
from billing import service as billing
from billing.close import service as close
from billing.close.models import Invoice, InvoiceLine, LicensorReport, Payout, SlaCredit, Statement
from billing.models import BillingPeriod, LedgerEntry
from kit.errors import Conflict, InvalidInput
from partners.models import Deployment, ModelVersion
from tests.billing import factories as f


def _counts(db: Session) -> tuple[int, ...]:
    return tuple(db.scalar(select(func.count()).select_from(t)) for t in
                 (LedgerEntry, Invoice, InvoiceLine, Statement, Payout, LicensorReport, SlaCredit))


def _statement(db: Session, kind: str, ref: str, period: str) -> Statement:
    payee = core_repo.payee(db, kind, ref)
    assert payee is not None
    return db.scalars(select(Statement).where(Statement.payee_id == payee.id, Statement.period == period)).one()


def test_close_writes_invoices_statements_and_payouts_once(db: Session) -> None:
    lab = f.partner(db)
    pro = f.model(db, lab, tier="partner_priced", price=40_000, platform_fee_bps=2_000)
    dev = f.model(db, lab, tier="revenue_share", price=25_000, licensor="bfl", royalty_bps=1_000)
    billing.ensure_payee(db, "partner", lab.id, stripe_account_id="acct_lab")
    customer = f.account(db)
    for _ in range(3):
        f.use(db, customer, pro, f.at("2026-09"))
    f.use(db, customer, dev, f.at("2026-09"), {"images": 2})

    result = close.close_period(db, "2026-09")
    assert not result.already_closed
    invoice = db.scalars(select(Invoice).where(Invoice.account_id == customer.id)).one()
    lines = db.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id)
                       .order_by(InvoiceLine.position)).all()
    assert [ln.amount_micros for ln in lines] == sorted([120_000, 50_000], reverse=False) or \
        sorted(ln.amount_micros for ln in lines) == [50_000, 120_000]
    assert invoice.total_micros == 170_000 and invoice.amount_due_cents == 17 and invoice.status == "draft"
    partner_stm = _statement(db, "partner", lab.id, "2026-09")
    assert (partner_stm.gross_micros, partner_stm.net_micros, partner_stm.payout_cents) == (170_000, 96_000, 9)
    assert partner_stm.carried_out_micros == 6_000
    licensor_stm = _statement(db, "licensor", "bfl", "2026-09")
    assert (licensor_stm.net_micros, licensor_stm.payout_cents, licensor_stm.carried_out_micros) == (5_000, 0, 5_000)
    payout = db.scalars(select(Payout)).one()
    assert (payout.amount_cents, payout.destination, payout.status) == (9, "acct_lab", "pending")
    # What a payee is owed after close is exactly what its statement carries.
    assert -core_repo.balances(db, ledger.partner_payable(lab.id))[ledger.partner_payable(lab.id)] == 6_000
    report = db.scalars(select(LicensorReport)).one()
    assert report.payload["models"] == [{"model": f"{lab.slug}/{dev.slug}", "model_slug": dev.slug,
                                         "number_of_generations": 2, "requests": 1}]
    assert billing.ledger_is_balanced(db)

    before = _counts(db)
    again = close.close_period(db, "2026-09")
    assert again.already_closed and again.totals == result.totals and _counts(db) == before


def test_late_usage_lands_in_the_next_period_as_an_adjustment(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=10_000)
    customer = f.account(db)
    f.use(db, customer, model, f.at("2026-09"))
    close.close_period(db, "2026-09")
    late = f.use(db, customer, model, f.at("2026-09", day=30))
    assert (late.period, late.event_period) == ("2026-10", "2026-09")
    close.close_period(db, "2026-10")
    october = db.scalars(select(Invoice).where(Invoice.period == "2026-10")).one()
    assert october.total_micros == 10_000
    september = db.scalars(select(Invoice).where(Invoice.period == "2026-09")).one()
    assert september.total_micros == 10_000  # the frozen period did not change


def test_sub_cent_remainders_are_carried_never_lost(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=12_345)
    customer = f.account(db)
    f.use(db, customer, model, f.at("2026-08"))
    close.close_period(db, "2026-08")
    f.use(db, customer, model, f.at("2026-09"))
    close.close_period(db, "2026-09")
    aug, sep = db.scalars(select(Invoice).order_by(Invoice.period)).all()
    assert (aug.amount_due_cents, aug.carried_out_micros) == (1, 2_345)
    assert (sep.carried_in_micros, sep.amount_due_cents, sep.carried_out_micros) == (2_345, 1, 4_690)
    # Everything charged is either invoiced in whole cents or still carried.
    assert aug.total_micros + sep.total_micros == (aug.amount_due_cents + sep.amount_due_cents) * 10_000 + 4_690


def test_refund_after_payout_is_clawed_back_from_the_next_statement(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, tier="partner_priced", price=1_000_000, platform_fee_bps=2_000)
    billing.ensure_payee(db, "partner", lab.id, stripe_account_id="acct_lab")
    customer = f.account(db)
    usage = f.use(db, customer, model, f.at("2026-09"))
    close.close_period(db, "2026-09")
    assert _statement(db, "partner", lab.id, "2026-09").payout_cents == 80
    billing.refund_usage(db, usage.id, reason="bad output", when=f.at("2026-10"))
    close.close_period(db, "2026-10")
    october = _statement(db, "partner", lab.id, "2026-10")
    assert (october.refunds_micros, october.net_micros, october.payout_cents) == (800_000, -800_000, 0)
    assert october.carried_out_micros == -800_000
    invoice = db.scalars(select(Invoice).where(Invoice.period == "2026-10")).one()
    assert invoice.total_micros == -1_000_000 and invoice.amount_due_cents == 0
    assert invoice.carried_out_micros == -1_000_000  # a credit on the next invoice


def test_periods_close_in_order_and_only_after_they_end(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab)
    customer = f.account(db)
    f.use(db, customer, model, f.at("2026-08"))
    f.use(db, customer, model, f.at("2026-09"))
    with pytest.raises(Conflict, match="2026-08"):
        close.close_period(db, "2026-09")
    with pytest.raises(InvalidInput, match="not ended"):
        close.close_period(db, "2099-01")
    close.close_period(db, "2026-08")
    assert close.next_period_to_close(db) == "2026-09"


def test_prepaid_usage_draws_credit_and_gets_a_statement(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=30_000)
    customer = f.account(db, mode="prepaid")
    billing.post_transaction(db, [(ledger.PLATFORM_STRIPE, 100_000), (ledger.customer_credit(customer.id), -100_000)],
                             currency="usd", kind="topup", period="2026-09", ref="top_test")
    f.use(db, customer, model, f.at("2026-09"))
    assert billing.credit_balance(db, customer.id) == 70_000
    close.close_period(db, "2026-09")
    statement = db.scalars(select(Invoice).where(Invoice.account_id == customer.id)).one()
    assert (statement.kind, statement.total_micros, statement.status) == ("statement", 30_000, "settled")


def test_royalty_minimum_is_topped_up_by_the_platform(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, tier="revenue_share", price=10_000, licensor="bfl", royalty_bps=1_000,
                    minimum_fee_micros=500_000)
    customer = f.account(db)
    f.use(db, customer, model, f.at("2026-09"))
    close.close_period(db, "2026-09")
    stm = _statement(db, "licensor", "bfl", "2026-09")
    assert (stm.net_micros, stm.credits_micros) == (500_000, 499_000)


def _request(db: Session, model, account, *, pool: str, status: str, latency_ms: int, when: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    version = db.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id))
    if version is None:
        version = ModelVersion(model_id=model.id, number=1, artifact_digest="sha256:x", artifact_size=1, manifest={})
        db.add(version)
        db.flush()
    deployment = db.scalar(select(Deployment).where(Deployment.model_id == model.id))
    if deployment is None:
        deployment = Deployment(model_id=model.id, version_id=version.id, pool=pool)
        db.add(deployment)
        db.flush()
    from gateway.models import Request

    db.add(Request(account_id=account.id, model_id=model.id, version_id=version.id, deployment_id=deployment.id,
                   model_ref="x/y", pool=pool, status=status, input={}, created_at=when, started_at=when,
                   completed_at=when + dt.timedelta(milliseconds=latency_ms)))
    db.flush()


def test_sla_credit_by_band_on_the_invoice(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab)
    customer = f.account(db)
    billing.add_pool_contract(db, customer, pool="gold", monthly_fee_micros=1_000_000_000,
                              latency_target_ms=2_000, effective_from=f.SINCE)
    for i in range(100):  # 94 within target, 4 slow, 2 failed: 94% → the 25% band
        status, latency = ("failed", 100) if i < 2 else ("succeeded", 5_000 if i < 6 else 500)
        _request(db, model, customer, pool="gold", status=status, latency_ms=latency, when=f.at("2026-09"))
    _request(db, model, customer, pool="gold", status="canceled", latency_ms=9_999, when=f.at("2026-09"))
    close.close_period(db, "2026-09")
    credit = db.scalars(select(SlaCredit)).one()
    assert (credit.requests, credit.within_target, credit.compliance_bps, credit.credit_bps) == (100, 94, 9_400, 2_500)
    invoice = db.scalars(select(Invoice)).one()
    kinds = {ln.kind: ln.amount_micros for ln in db.scalars(select(InvoiceLine))}
    assert kinds == {"pool_fee": 1_000_000_000, "sla_credit": -250_000_000}
    assert invoice.amount_due_cents == 75_000


def test_freeze_first_then_close(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab)
    customer = f.account(db)
    f.use(db, customer, model, f.at("2026-09"))
    assert close.freeze_period(db, "2026-09") == "closing"
    late = f.use(db, customer, model, f.at("2026-09"))
    assert late.period == "2026-10"
    close.close_period(db, "2026-09")
    assert db.get(BillingPeriod, "2026-09").status == "closed"

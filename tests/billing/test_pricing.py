"""Price cards and licenses: overrides, tiers, minimums, royalties, fees, authorization (402/403)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import ledger, pricing
from billing import service as billing
from billing.close import service as close
from billing.models import LedgerEntry, UsageRecord
from kit.errors import Forbidden, InvalidInput, NotFound, PaymentRequired
from tests.billing import factories as f


def test_megapixels_round_up_per_image() -> None:
    assert pricing.billable_quantity("megapixels", pricing.check_units({"megapixels": 2.1, "images": 2})) == 4
    assert pricing.billable_quantity("megapixels", pricing.check_units({"megapixels": [1.05, 0.3]})) == 3
    assert pricing.billable_quantity("megapixels", pricing.check_units({"megapixels": 2})) == 2
    assert pricing.billable_quantity("video_seconds", pricing.check_units({"video_seconds": 5.0625})) == Decimal("5.0625")


@pytest.mark.parametrize("units", [{"megapixels": -1}, {"images": float("nan")}, {"images": "inf"},
                                   {"images": True}, {"tokens": 3}, {"images": "12abc"}, {"megapixels": []},
                                   {"images": 10**13}])
def test_bad_units_are_refused(units: dict) -> None:
    with pytest.raises(InvalidInput):
        pricing.check_units(units)


def test_graduated_tiers_price_across_boundaries() -> None:
    tiers = pricing.parse_tiers([{"up_to": 10, "unit_price_micros": 100}, {"up_to": 20, "unit_price_micros": 50},
                                 {"up_to": None, "unit_price_micros": 10}])
    assert pricing.charge_micros(Decimal(5), unit_price_micros=0, tiers=tiers, already=Decimal(8)) == 2 * 100 + 3 * 50
    assert pricing.charge_micros(Decimal(30), unit_price_micros=0, tiers=tiers) == 1000 + 500 + 100
    assert pricing.charge_micros(Decimal("0.5"), unit_price_micros=3, tiers=[], minimum_micros=7) == 7
    for bad in ([{"up_to": 5, "unit_price_micros": 1}], [{"up_to": None, "unit_price_micros": 1}, {"up_to": 3,
                 "unit_price_micros": 1}], [{"up_to": 5, "unit_price_micros": -1}, {"up_to": None, "unit_price_micros": 1}]):
        with pytest.raises(InvalidInput):
            pricing.parse_tiers(bad)


def test_volume_tiers_follow_the_accounts_monthly_volume(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=0, tiers=[{"up_to": 3, "unit_price_micros": 1_000},
                                             {"up_to": None, "unit_price_micros": 400}])
    a, b = f.account(db), f.account(db)
    charged = [f.use(db, a, model, f.at("2026-09", day=d)).amount_micros for d in range(1, 6)]
    assert charged == [1_000, 1_000, 1_000, 400, 400]
    assert f.use(db, b, model, f.at("2026-09")).amount_micros == 1_000  # another account starts at tier 1
    assert f.use(db, a, model, f.at("2026-10")).amount_micros == 1_000  # a new month starts over
    two = f.use(db, a, model, f.at("2026-10", day=20), {"images": 3})
    assert two.amount_micros == 2 * 1_000 + 400


def test_enterprise_override_wins_and_ends(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=40_000)
    contract, other = f.account(db), f.account(db)
    billing.set_account_price(db, model, contract, unit="images", unit_price_micros=25_000, minimum_micros=30_000,
                              effective_from=f.SINCE, ends_at=f.at("2026-10", day=1))
    # A later model-wide price change does not undo a running contract.
    billing.set_pricing(db, model, tier="open", unit="images", unit_price_micros=50_000,
                        effective_from=f.at("2026-08", day=1))
    assert f.use(db, contract, model, f.at("2026-09")).amount_micros == 30_000  # the contract's minimum
    assert f.use(db, contract, model, f.at("2026-09"), {"images": 2}).amount_micros == 50_000
    assert f.use(db, other, model, f.at("2026-09")).amount_micros == 50_000
    assert f.use(db, contract, model, f.at("2026-10")).amount_micros == 50_000  # the contract ended


def test_price_change_mid_period_prices_each_request_by_its_time(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, price=10_000)
    billing.set_pricing(db, model, tier="open", unit="images", unit_price_micros=20_000,
                        effective_from=f.at("2026-09", day=15, hour=0))
    customer = f.account(db)
    before = f.use(db, customer, model, f.at("2026-09", day=14))
    after = f.use(db, customer, model, f.at("2026-09", day=16))
    late_but_old = f.use(db, customer, model, f.at("2026-09", day=1))
    assert (before.amount_micros, after.amount_micros, late_but_old.amount_micros) == (10_000, 20_000, 10_000)
    close.close_period(db, "2026-09")
    with pytest.raises(InvalidInput, match="closed period"):
        billing.set_pricing(db, model, tier="open", unit="images", unit_price_micros=1,
                            effective_from=f.at("2026-09", day=20))


def test_revenue_share_per_unit_royalty_included_volume_and_minimum(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, tier="revenue_share", price=30_000, licensor="bfl", royalty_bps=1_000,
                    royalty_per_unit_micros=2_000, included_units=2)
    customer = f.account(db)
    royalties = [f.use(db, customer, model, f.at("2026-09")).royalty_micros for _ in range(4)]
    assert royalties == [3_000, 3_000, 5_000, 5_000]  # 10%, plus 2,000 per image past the first two


def test_partner_priced_hosting_fee_per_gpu_second(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, tier="partner_priced", price=100_000, platform_fee_bps=1_000,
                    hosting_fee_per_gpu_second_micros=3_000)
    use = f.use(db, f.account(db), model, f.at("2026-09"), {"images": 1, "gpu_seconds": 4.5})
    assert (use.platform_micros, use.partner_micros) == (10_000 + 13_500, 76_500)
    capped = f.use(db, f.account(db), model, f.at("2026-09"), {"images": 1, "gpu_seconds": 1_000})
    assert (capped.platform_micros, capped.partner_micros) == (100_000, 0)


def test_commercial_use_is_enforced_before_running(db: Session) -> None:
    lab = f.partner(db)
    dev = f.model(db, lab, tier="revenue_share", licensor="bfl", royalty_bps=1_000)
    schnell = f.model(db, lab, tier="open")
    hobbyist = f.account(db, commercial=False)
    with pytest.raises(Forbidden, match="commercial use"):
        billing.authorize_request(db, hobbyist, dev.id)
    assert billing.authorize_request(db, hobbyist, schnell.id).estimate_micros == 40_000
    with pytest.raises(NotFound):
        billing.authorize_request(db, hobbyist, partner_model_without_price(db, lab).id)
    assert billing.authorize_request(db, f.account(db), dev.id).pricing is None  # nothing to check


def partner_model_without_price(db: Session, lab):  # type: ignore[no-untyped-def]
    from partners import service as partners

    return partners.create_model(db, lab, slug="unpriced")


def _top_up(db: Session, account, micros: int) -> None:  # type: ignore[no-untyped-def]
    billing.post_transaction(db, [(ledger.PLATFORM_STRIPE, micros), (ledger.customer_credit(account.id), -micros)],
                             currency="usd", kind="topup", period=billing.open_period(db), ref=f"top_{micros}")


def test_prepaid_draws_down_in_real_time_and_refuses_with_402(db: Session) -> None:
    from gateway.models import Request
    from partners.models import Deployment, ModelVersion

    lab = f.partner(db)
    model = f.model(db, lab, unit="megapixels", price=25_000)
    customer = f.account(db, mode="prepaid")
    with pytest.raises(PaymentRequired) as refused:
        billing.authorize_request(db, customer, model.id)
    assert refused.value.status_code == 402 and refused.value.extra["required_micros"] == 25_000
    _top_up(db, customer, 100_000)
    assert billing.authorize_request(db, customer, model.id, {"megapixels": 4}).available_micros == 100_000
    with pytest.raises(PaymentRequired):
        billing.authorize_request(db, customer, model.id, {"megapixels": 5})
    f.use(db, customer, model, dt.datetime.now(dt.UTC), {"megapixels": 3})
    assert billing.credit_balance(db, customer.id) == 25_000
    # Requests already queued or running hold their expected cost.
    version = ModelVersion(model_id=model.id, number=1, artifact_digest="sha256:x", artifact_size=1, manifest={})
    db.add(version)
    db.flush()
    deployment = Deployment(model_id=model.id, version_id=version.id)
    db.add(deployment)
    db.flush()
    db.add(Request(account_id=customer.id, model_id=model.id, version_id=version.id, deployment_id=deployment.id,
                   model_ref="x/y", pool="shared", status="queued", input={}))
    db.flush()
    with pytest.raises(PaymentRequired):
        billing.authorize_request(db, customer, model.id)
    legs = db.scalars(select(LedgerEntry).where(LedgerEntry.kind == "usage")).all()
    assert {leg.ledger_account for leg in legs} == {ledger.customer_credit(customer.id), ledger.PLATFORM_REVENUE}


def test_partial_refunds_give_back_exactly_the_split(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab, tier="revenue_share", price=1_000_003, licensor="bfl", royalty_bps=3_333)
    use = f.use(db, f.account(db), model, f.at("2026-09"))
    parts = [billing.refund_usage(db, use.id, amount_micros=a) for a in (333_333, 1, 400_000)]
    last = billing.refund_usage(db, use.id)
    assert last.amount_micros == 1_000_003 - 733_334
    assert sum(p.royalty_micros for p in [*parts, last]) == use.royalty_micros
    assert sum(p.platform_micros for p in [*parts, last]) == use.platform_micros
    with pytest.raises(InvalidInput):
        billing.refund_usage(db, use.id, amount_micros=1)
    assert billing.ledger_is_balanced(db)


def test_corrections_are_reversing_entries_never_edits(db: Session) -> None:
    customer = f.account(db, mode="prepaid")
    _top_up(db, customer, 50_000)
    txn = db.scalar(select(LedgerEntry.transaction_id).where(LedgerEntry.kind == "topup"))
    correction = billing.reverse_transaction(db, txn, reason="topup posted twice")
    assert billing.credit_balance(db, customer.id) == 0
    with pytest.raises(Exception, match="already reversed"):
        billing.reverse_transaction(db, txn, reason="again")
    entry = db.scalars(select(LedgerEntry).where(LedgerEntry.transaction_id == correction)).first()
    entry.amount_micros = 1
    with pytest.raises(RuntimeError, match="append-only"):
        db.flush()
    db.rollback()


def test_only_succeeded_requests_are_charged(db: Session) -> None:
    lab = f.partner(db)
    model = f.model(db, lab)
    for status in ("failed", "expired", "blocked", "canceled"):
        with pytest.raises(InvalidInput, match="only succeeded"):
            billing.record_usage(db, request_id=f"req_{status}", account_id=f.account(db).id, model=model,
                                 version_id="v", units={"images": 1}, occurred_at=f.at("2026-09"), status=status)
    assert db.scalar(select(UsageRecord.id)) is None


def test_a_version_can_have_its_own_price(db: Session) -> None:
    from partners.models import ModelVersion

    lab = f.partner(db)
    model = f.model(db, lab, price=10_000)
    v2 = ModelVersion(model_id=model.id, number=2, artifact_digest="sha256:y", artifact_size=1, manifest={})
    db.add(v2)
    db.flush()
    billing.set_pricing(db, model, tier="open", unit="images", unit_price_micros=15_000, version_id=v2.id,
                        effective_from=f.SINCE)
    customer = f.account(db)
    on_v2 = billing.record_usage(db, request_id="req_v2", account_id=customer.id, model=model, version_id=v2.id,
                                 units={"images": 1}, occurred_at=f.at("2026-09"))
    assert (on_v2.amount_micros, f.use(db, customer, model, f.at("2026-09")).amount_micros) == (15_000, 10_000)
    assert billing.pricing_at(db, model.id, f.at("2026-09"), version_id=v2.id).price_card.unit_price_micros == 15_000

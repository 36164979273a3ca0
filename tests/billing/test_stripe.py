"""Stripe end to end: the SDK against localstripe and the Connect/invoicing stand-in.

Top-ups credited by Stripe's webhook, invoices with line items by model finalized and paid,
Connect payouts that survive timeouts and errors without a second transfer, reversed
transfers owed again, duplicate and forged webhooks, and the stand-in's objects checked
against Stripe's published fixtures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import func, select

from billing import ledger
from billing import repository as core_repo
from billing import service as billing
from billing.close.models import Invoice, InvoiceLine, Payout
from billing.models import LedgerEntry
from billing.payments import service as payments
from billing.payments.models import StripeEvent, Topup
from billing.settings import get_billing_settings
from billing.stripe_gateway import StripeGateway
from billing.tasks import deliver, run_close
from kit.db import session_scope
from tests.billing import factories as f
from tests.billing.conftest import FIXTURES, wait_for
from tests.fakes.stripe_connect.processes import StripeProcesses

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def _client(stripe_fakes: StripeProcesses) -> stripe.StripeClient:
    """The SDK as a customer's browser (Stripe.js) or a test would use it."""
    return stripe.StripeClient("sk_test_client", base_addresses={"api": stripe_fakes.api_base})


def _card_on_file(client: stripe.StripeClient, customer: str) -> str:
    pm = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    client.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": pm.id}})
    return pm.id


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Decimal):  # the SDK parses Stripe's decimal strings
        return "str"
    return type(value).__name__


def _same_shape(ours: Any, theirs: Any, path: str, problems: list[str]) -> None:
    if ours is None or theirs is None:  # nullable in Stripe's schema
        return
    if _kind_of(ours) != _kind_of(theirs):
        problems.append(f"{path}: {_kind_of(ours)} here, {_kind_of(theirs)} in Stripe's fixture")
        return
    if isinstance(theirs, dict):
        for key, value in theirs.items():
            if key not in ours:
                problems.append(f"{path}.{key}: missing")
            else:
                _same_shape(ours[key], value, f"{path}.{key}", problems)
    if path.endswith(".id") and isinstance(theirs, str) and "_" in theirs:
        if ours.split("_")[0] != theirs.split("_")[0]:
            problems.append(f"{path}: id prefix {ours.split('_')[0]}_, Stripe's is {theirs.split('_')[0]}_")


def test_stand_in_objects_match_stripes_fixtures(stripe_fakes: StripeProcesses) -> None:
    if not FIXTURES.exists():
        pytest.skip("Stripe's fixtures3.json is not beside the repository")
    fixtures = json.loads(FIXTURES.read_text())["resources"]
    c = _client(stripe_fakes)
    customer = c.v1.customers.create(params={"name": "Shape"})
    _card_on_file(c, customer.id)
    account = c.v1.accounts.create(params={"type": "express", "country": "US"})
    transfer = c.v1.transfers.create(params={"amount": 700, "currency": "usd", "destination": account.id})
    reversal = c.v1.transfers.reversals.create(transfer.id, params={"amount": 100})
    invoice = c.v1.invoices.create(params={"customer": customer.id, "currency": "usd"})
    item = c.v1.invoice_items.create(params={"customer": customer.id, "invoice": invoice.id, "amount": 500,
                                             "currency": "usd", "description": "model"})
    paid = c.v1.invoices.pay(c.v1.invoices.finalize_invoice(invoice.id).id)
    payout = c.v1.payouts.create(params={"amount": 300, "currency": "usd"},
                                 options={"stripe_account": account.id})
    objects = {"account": account, "transfer": c.v1.transfers.retrieve(transfer.id), "transfer_reversal": reversal,
               "invoice": paid, "invoiceitem": item, "line_item": paid.lines.data[0], "payout": payout}
    problems: list[str] = []
    for kind, obj in objects.items():
        data = obj.to_dict()
        assert data["object"] == fixtures[kind]["object"], kind
        _same_shape(data, fixtures[kind], kind, problems)
        assert data["id"].split("_")[0] == fixtures[kind]["id"].split("_")[0], kind
    assert not problems, "\n".join(problems)
    assert paid.status == "paid" and paid.amount_paid == 500


def test_topup_is_credited_once_by_stripes_webhook(live_app, stripe_fakes: StripeProcesses) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        account = f.account(s, mode="prepaid")
        topup = payments.start_topup(s, account, amount_cents=2_500, gateway=StripeGateway.from_settings())
        topup_id, intent, customer = topup.id, topup.payment_intent_id, account.stripe_customer_id
        account_id = account.id
    assert topup.client_secret and topup.status == "pending"
    # What Stripe.js does in the customer's browser with the client secret:
    c = _client(stripe_fakes)
    pm = c.v1.payment_methods.create(params={"type": "card", "card": CARD})
    c.v1.payment_methods.attach(pm.id, params={"customer": customer})
    c.v1.payment_intents.update(intent, params={"payment_method": pm.id})
    assert c.v1.payment_intents.confirm(intent).status == "succeeded"

    def credited() -> bool:
        with session_scope() as s:
            return s.get(Topup, topup_id).status == "succeeded"

    wait_for(credited, what="payment_intent.succeeded to credit the top-up")
    with session_scope() as s:
        assert billing.credit_balance(s, account_id) == 25_000_000
        assert s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "topup")) == 2
        outcomes = [e.outcome for e in s.scalars(select(StripeEvent))]
        assert outcomes.count("credited") == 1


def _signed(payload: bytes, secret: str) -> str:
    stamp = int(time.time())
    sig = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={sig}"


def test_duplicate_and_forged_webhooks(live_app) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        account = f.account(s, mode="prepaid")
        s.add(Topup(id="top_dup", account_id=account.id, amount_cents=1_000, currency="usd",
                    payment_intent_id="pi_dup"))
        account_id = account.id
    event = {"id": "evt_dup", "object": "event", "type": "payment_intent.succeeded",
             "data": {"object": {"id": "pi_dup", "object": "payment_intent", "amount": 1_000, "currency": "usd",
                                 "metadata": {"topup_id": "top_dup"}, "status": "succeeded"}}}
    payload = json.dumps(event).encode()
    secret = get_billing_settings().stripe_webhook_secret
    url = f"{live_app.base}/v1/stripe/webhooks"
    first = httpx.post(url, content=payload, headers={"Stripe-Signature": _signed(payload, secret)})
    again = httpx.post(url, content=payload, headers={"Stripe-Signature": _signed(payload, secret)})
    assert (first.json()["outcome"], again.json()["outcome"]) == ("credited", "duplicate")
    forged = httpx.post(url, content=payload.replace(b"1000", b"9000"),
                        headers={"Stripe-Signature": _signed(payload, secret)})
    unsigned = httpx.post(url, content=payload)
    assert forged.status_code == 400 and unsigned.status_code == 400
    with session_scope() as s:
        assert billing.credit_balance(s, account_id) == 10_000_000
        assert s.scalar(select(func.count()).select_from(StripeEvent)) == 1


def test_monthly_invoice_with_lines_by_model_is_finalized_and_paid(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        lab = f.partner(s)
        art = f.model(s, lab, slug="art", price=33_333)
        dev = f.model(s, lab, slug="dev", tier="revenue_share", price=250_001, licensor="bfl", royalty_bps=1_000)
        account = f.account(s)
        for _ in range(3):
            f.use(s, account, art, f.at("2026-09"))
        f.use(s, account, dev, f.at("2026-09"), {"images": 4})
        customer = payments.ensure_customer(s, account, StripeGateway.from_settings())
        account_id = account.id
    _card_on_file(_client(stripe_fakes), customer)
    result = run_close("2026-09")
    assert result["delivered"]["invoices"] == {"paid": 1}
    with session_scope() as s:
        invoice = s.scalars(select(Invoice).where(Invoice.account_id == account_id)).one()
        lines = s.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id)).all()
        assert invoice.total_micros == 3 * 33_333 + 4 * 250_001 and invoice.amount_due_cents == 110
        assert sorted(ln.amount_cents for ln in lines) == [9, 100]  # the carried sub-cents add a third item
        stripe_id, invoice_id = invoice.stripe_invoice_id, invoice.id
        receivable = core_repo.balances(s, ledger.customer_receivable(account_id))
        assert receivable == {ledger.customer_receivable(account_id): invoice.carried_out_micros}
    on_stripe = _client(stripe_fakes).v1.invoices.retrieve(stripe_id)
    assert on_stripe.status == "paid" and on_stripe.amount_paid == 110
    descriptions = sorted(line.description for line in on_stripe.lines.data)
    assert descriptions[0].startswith("Sub-cent") and any("/art: 3 requests" in d for d in descriptions)

    def webhook_outcome() -> str | None:
        with session_scope() as s:
            return s.scalar(select(StripeEvent.outcome).where(StripeEvent.type == "invoice.paid"))

    # Stripe sends invoice.paid a second after the payment; on a loaded machine it can land
    # while the close is still committing, and then it is the webhook that marks the invoice
    # paid (or, before the Stripe id is stored, ignores it). Either way nothing is paid twice.
    outcome = wait_for(webhook_outcome, timeout=30.0, what="invoice.paid to arrive")
    assert outcome in ("already paid", "paid", "ignored: unknown invoice"), outcome
    with session_scope() as s:
        paid = s.get(Invoice, invoice_id)
        assert (paid.status, paid.amount_paid_cents) == ("paid", 110)
        assert core_repo.balances(s, ledger.customer_receivable(account_id)) == receivable
    assert run_close("2026-09")["already_closed"]


def test_payout_survives_timeouts_and_errors_with_one_transfer(committed, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    gateway = StripeGateway.from_settings()
    with session_scope() as s:
        lab = f.partner(s)
        model = f.model(s, lab, tier="partner_priced", price=1_234_567, platform_fee_bps=2_000)
        payee = billing.ensure_payee(s, "partner", lab.id)
        acct = payments.onboard_payee(s, payee, gateway, email="pay@lab.test")
        assert payments.onboard_payee(s, payee, gateway) == acct
        f.use(s, f.account(s), model, f.at("2026-09"))
    # The answer to the first transfer is held past the client's timeout: the SDK retries
    # with the same key and gets the transfer made the first time.
    stripe_fakes.fault("/v1/transfers", "hang_after", seconds=4)
    result = run_close("2026-09", gateway=gateway)
    assert result["delivered"]["payouts"] == {"paid": 1}
    with session_scope() as s:
        payout = s.scalars(select(Payout)).one()
        assert (payout.amount_cents, payout.status, payout.destination) == (98, "paid", acct)
    created = [e for e in stripe_fakes.log() if e["path"] == "/v1/transfers" and e["idempotency_key"] == payout.id]
    assert [e["replayed"] for e in created] == [False, True]
    transfers = _client(stripe_fakes).v1.transfers.list(params={"transfer_group": payout.id}).data
    assert len(transfers) == 1 and transfers[0].amount == 98 and transfers[0].destination == acct


def test_payout_left_pending_when_stripe_is_down_then_sent_once(committed, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    gateway = StripeGateway.from_settings()
    with session_scope() as s:
        lab = f.partner(s)
        model = f.model(s, lab, tier="partner_priced", price=500_000, platform_fee_bps=0)
        payments.onboard_payee(s, billing.ensure_payee(s, "partner", lab.id), gateway)
        f.use(s, f.account(s), model, f.at("2026-09"))
    # The transfer is made, but every answer to it (and to the SDK's two retries) is lost.
    stripe_fakes.fault("/v1/transfers", "fail_after", count=3)
    assert run_close("2026-09", gateway=gateway)["delivered"]["payouts"] == {"pending": 1}
    with session_scope() as s:
        payout = s.scalars(select(Payout)).one()
        assert payout.status == "pending" and "Stripe failed" in payout.last_error
    assert deliver("2026-09", gateway=gateway)["payouts"] == {"paid": 1}
    assert run_close("2026-09", gateway=gateway)["delivered"]["payouts"] == {}
    transfers = _client(stripe_fakes).v1.transfers.list(params={"transfer_group": payout.id}).data
    assert len(transfers) == 1  # found by its transfer group on the retry, not made again
    made = [e for e in stripe_fakes.log() if e["path"] == "/v1/transfers" and e["idempotency_key"] == payout.id]
    assert [e["replayed"] for e in made] == [False, True, True]


def test_reversed_transfer_is_owed_again_on_the_next_statement(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    gateway = StripeGateway.from_settings()
    with session_scope() as s:
        lab = f.partner(s)
        model = f.model(s, lab, tier="partner_priced", price=500_000, platform_fee_bps=0)
        payments.onboard_payee(s, billing.ensure_payee(s, "partner", lab.id), gateway)
        f.use(s, f.account(s), model, f.at("2026-09"))
        lab_id = lab.id
    run_close("2026-09", gateway=gateway)
    with session_scope() as s:
        payout = s.scalars(select(Payout)).one()
    _client(stripe_fakes).v1.transfers.reversals.create(payout.stripe_transfer_id)

    def reversed_() -> bool:
        with session_scope() as s:
            return s.get(Payout, payout.id).status == "reversed"

    wait_for(reversed_, what="transfer.reversed")
    with session_scope() as s:
        owed = -core_repo.balances(s, ledger.partner_payable(lab_id))[ledger.partner_payable(lab_id)]
        assert owed == 500_000
        rows = billing.revenue_share_report(s, "2026-09")
        assert rows[0]["partner_micros"] == 500_000


def test_transfer_refused_by_stripe_is_owed_again(committed, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        lab = f.partner(s)
        model = f.model(s, lab, tier="partner_priced", price=500_000, platform_fee_bps=0)
        billing.ensure_payee(s, "partner", lab.id, stripe_account_id="acct_closed_long_ago")
        f.use(s, f.account(s), model, f.at("2026-09"))
        lab_id = lab.id
    result = run_close("2026-09", gateway=StripeGateway.from_settings())
    assert result["delivered"]["payouts"] == {"failed": 1}
    with session_scope() as s:
        payout = s.scalars(select(Payout)).one()
        assert "No such destination" in payout.last_error
        assert -core_repo.balances(s, ledger.partner_payable(lab_id))[ledger.partner_payable(lab_id)] == 500_000
        assert billing.ledger_is_balanced(s)


def test_customer_tops_up_with_a_saved_card_over_http(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    from gateway.service import issue_key

    with session_scope() as s:
        account = f.account(s, mode="prepaid")
        customer = payments.ensure_customer(s, account, StripeGateway.from_settings())
        key = issue_key(s, account)
        postpaid_key = issue_key(s, f.account(s))
    card = _card_on_file(_client(stripe_fakes), customer)
    auth = {"Authorization": f"Key {key}"}
    r = httpx.post(f"{live_app.base}/v1/billing/topups", json={"amount_cents": 5_000, "payment_method": card},
                   headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "succeeded" and r.json()["payment_intent"].startswith("pi_")
    balance = httpx.get(f"{live_app.base}/v1/billing/balance", headers=auth).json()
    assert balance == {"billing_mode": "prepaid", "currency": "usd", "credit_micros": 50_000_000}

    def webhook_seen() -> bool:
        with session_scope() as s:
            return s.scalar(select(StripeEvent.outcome).where(StripeEvent.type == "payment_intent.succeeded")) \
                == "already credited"

    wait_for(webhook_seen, what="payment_intent.succeeded to arrive and credit nothing more")
    assert httpx.get(f"{live_app.base}/v1/billing/balance", headers=auth).json()["credit_micros"] == 50_000_000
    refused = httpx.post(f"{live_app.base}/v1/billing/topups", json={"amount_cents": 5_000},
                         headers={"Authorization": f"Key {postpaid_key}"})
    assert refused.status_code == 422 and "prepaid" in refused.json()["detail"]
    assert httpx.post(f"{live_app.base}/v1/billing/topups", json={"amount_cents": 5_000}).status_code == 401

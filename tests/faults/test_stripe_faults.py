"""Stripe answering 500 and timing out, through a fault proxy in front of the Stripe stand-in.

A card charged while its answer is lost is still credited, once, from Stripe's signed
webhook; invoices and Connect payouts pushed through a Stripe that fails before and after
doing the work, and holds answers past the client's timeout, end up created once, paid once
and booked once, with the ledger balanced.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import func, select

from billing import service as billing
from billing.close.models import Invoice, Payout
from billing.models import LedgerEntry
from billing.payments import service as payments
from billing.payments.models import StripeEvent, Topup
from billing.settings import get_billing_settings
from billing.stripe_gateway import StripeGateway, get_gateway
from billing.tasks import deliver, run_close
from kit.db import session_scope
from tests.billing import factories as f
from tests.fakes.fault_proxy import FaultProxy
from tests.fakes.stripe_connect.processes import StripeProcesses, free_port

pytestmark = pytest.mark.timeout(180)
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
TIMEOUT_S = 1.0
RETRIES = 2  # the SDK's own, with the same idempotency key


@pytest.fixture(scope="module")
def stripe_behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StripeProcesses, FaultProxy]]:
    """localstripe and the stand-in, reached by the app only through the fault proxy."""
    saved = {k: os.environ.get(k) for k in ("MEDIAGATE_STRIPE_API_BASE", "MEDIAGATE_STRIPE_TIMEOUT_S",
                                            "MEDIAGATE_STRIPE_MAX_NETWORK_RETRIES")}
    procs = StripeProcesses(tmp_path_factory.mktemp("stripe"))
    try:
        with FaultProxy(procs.api_base) as proxy:
            os.environ.update(MEDIAGATE_STRIPE_API_BASE=proxy.url, MEDIAGATE_STRIPE_TIMEOUT_S=str(TIMEOUT_S),
                              MEDIAGATE_STRIPE_MAX_NETWORK_RETRIES=str(RETRIES))
            get_billing_settings.cache_clear()
            get_gateway.cache_clear()
            yield procs, proxy
    finally:
        procs.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_billing_settings.cache_clear()
        get_gateway.cache_clear()


@pytest.fixture
def proxy(stripe_behind_proxy: tuple[StripeProcesses, FaultProxy]) -> Iterator[FaultProxy]:
    _, fault_proxy = stripe_behind_proxy
    yield fault_proxy
    fault_proxy.clear()


@pytest.fixture
def live_app(committed, stripe_behind_proxy) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The API on a loopback port, registered as the stand-in's webhook endpoint."""
    import uvicorn

    from gateway.app import create_app

    procs, _ = stripe_behind_proxy
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(check_schema=False), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    procs.add_webhook("mediagate", f"{base}/v1/stripe/webhooks", get_billing_settings().stripe_webhook_secret)
    yield base
    server.should_exit = True
    thread.join(timeout=10)


def _direct(procs: StripeProcesses) -> stripe.StripeClient:
    """Stripe as the customer's browser (or our checks) see it: no proxy in between."""
    return stripe.StripeClient("sk_test_client", base_addresses={"api": procs.api_base, "connect": procs.api_base})


def _card_on_file(client: stripe.StripeClient, customer: str) -> str:
    pm = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    client.v1.customers.update(customer, params={"invoice_settings": {"default_payment_method": pm.id}})
    return pm.id


def _wait(predicate, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _transactions(kind: str) -> Counter[str]:
    """How many ledger transactions of `kind` each object (top-up, invoice, payout) has."""
    with session_scope() as s:
        rows = s.execute(select(LedgerEntry.ref, func.count(func.distinct(LedgerEntry.transaction_id)))
                         .where(LedgerEntry.kind == kind).group_by(LedgerEntry.ref)).all()
    return Counter({ref: n for ref, n in rows})


def test_card_charged_while_stripe_answers_500_is_credited_once(live_app, stripe_behind_proxy, proxy) -> None:  # type: ignore[no-untyped-def]
    procs, _ = stripe_behind_proxy
    from gateway.service import issue_key

    with session_scope() as s:
        account = f.account(s, mode="prepaid")
        customer = payments.ensure_customer(s, account, StripeGateway.from_settings())
        key, account_id = issue_key(s, account), account.id
    card = _card_on_file(_direct(procs), customer)
    auth = {"Authorization": f"Key {key}"}

    # Stripe makes and charges the PaymentIntent, and every answer (the SDK's retries too) is lost.
    proxy.fail("/v1/payment_intents", "error_after", count=1 + RETRIES)
    lost = httpx.post(f"{live_app}/v1/billing/topups", json={"amount_cents": 2_000, "payment_method": card},
                      headers=auth, timeout=60)
    assert lost.status_code == 503, lost.text
    assert lost.headers["content-type"].startswith("application/problem+json")
    assert lost.json()["type"].endswith("/stripe-unavailable") and int(lost.headers["retry-after"]) >= 1
    charged = [c for c in proxy.met("error_after") if c.upstream_status == 200]
    assert len(charged) == 1 + RETRIES and len({c.idempotency_key for c in charged}) == 1

    # The charge is real: Stripe's signed webhook brings the credit, with our ids from its metadata.
    def credited() -> int:
        with session_scope() as s:
            return billing.credit_balance(s, account_id)

    assert _wait(credited, what="the lost top-up to be credited from the webhook") == 20_000_000

    # The customer tries again; this time the first answer times out and the SDK's retry gets it.
    proxy.fail("/v1/payment_intents", "hang_after", count=1, seconds=TIMEOUT_S + 1)
    again = httpx.post(f"{live_app}/v1/billing/topups", json={"amount_cents": 2_000, "payment_method": card},
                       headers=auth, timeout=60)
    assert again.status_code == 201 and again.json()["status"] == "succeeded", again.text
    assert proxy.armed() == 0

    def both_events_seen() -> bool:
        with session_scope() as s:
            return s.scalar(select(func.count()).select_from(StripeEvent)
                            .where(StripeEvent.type == "payment_intent.succeeded")) == 2

    _wait(both_events_seen, what="both payment_intent.succeeded events")
    with session_scope() as s:
        topups = s.scalars(select(Topup).where(Topup.account_id == account_id)).all()
        assert sorted(t.status for t in topups) == ["succeeded", "succeeded"]
        assert len({t.payment_intent_id for t in topups}) == 2
        assert billing.credit_balance(s, account_id) == 40_000_000  # two charges, two credits, no more
        assert billing.ledger_is_balanced(s)
        outcomes = sorted(s.scalars(select(StripeEvent.outcome).where(StripeEvent.type == "payment_intent.succeeded")))
    assert outcomes == ["already credited", "credited"]
    assert _transactions("topup") == Counter({t.id: 1 for t in topups})
    for topup in topups:
        intent = _direct(procs).v1.payment_intents.retrieve(topup.payment_intent_id)
        assert (intent.status, intent.amount, intent.metadata["topup_id"]) == ("succeeded", 2_000, topup.id)


def test_invoices_and_payouts_through_a_failing_stripe_are_made_paid_and_booked_once(
        live_app, stripe_behind_proxy, proxy) -> None:  # type: ignore[no-untyped-def]
    procs, _ = stripe_behind_proxy
    gateway = StripeGateway.from_settings()
    with session_scope() as s:
        labs = [f.partner(s) for _ in range(2)]
        models = [f.model(s, lab, tier="partner_priced", price=700_000 + i, platform_fee_bps=2_000)
                  for i, lab in enumerate(labs)]
        for lab in labs:
            payments.onboard_payee(s, billing.ensure_payee(s, "partner", lab.id), gateway)
        customers = []
        for _ in range(3):
            account = f.account(s)
            for model in models:
                f.use(s, account, model, f.at("2026-09"), {"images": 2})
            customers.append(payments.ensure_customer(s, account, gateway))
    for customer in customers:
        _card_on_file(_direct(procs), customer)

    # Every kind of call fails at least once, before and after Stripe did the work, and times out.
    proxy.fail("/v1/invoices", "error_after", count=1 + RETRIES)          # made, id never learned
    proxy.fail("/v1/invoiceitems", "hang_after", count=1, seconds=TIMEOUT_S + 1)
    proxy.fail("/v1/invoiceitems", "error_before", count=1)
    proxy.fail("/v1/invoices/", "error_before", count=1 + RETRIES, method="GET")
    proxy.fail("/v1/invoices/in_", "error_after", count=2 * (1 + RETRIES))  # finalize or pay: done, unheard
    proxy.fail("/v1/transfers", "error_after", count=1 + RETRIES)
    proxy.fail("/v1/transfers", "hang_after", count=1, seconds=TIMEOUT_S + 1)
    proxy.fail("/v1/transfers", "error_before", count=1, method="GET")

    result = run_close("2026-09", gateway=gateway)
    rounds = [result["delivered"]]
    while sum(n for kind in ("invoices", "payouts") for s_, n in rounds[-1][kind].items() if s_ == "pending"
              or s_ == "draft") and len(rounds) < 8:
        rounds.append(deliver("2026-09", gateway=gateway))
    assert proxy.armed() == 0, [f for f in proxy.faults if f.count]
    assert len(rounds) > 1, "the faults should have left something for a second round"

    with session_scope() as s:
        invoices = s.scalars(select(Invoice).where(Invoice.kind == "invoice", Invoice.period == "2026-09")).all()
        payouts = s.scalars(select(Payout).where(Payout.period == "2026-09")).all()
        assert len(invoices) == 3 and len(payouts) == 2
        assert {i.status for i in invoices} == {"paid"}, [(i.id, i.status, i.last_error) for i in invoices]
        assert {p.status for p in payouts} == {"paid"}, [(p.id, p.status, p.last_error) for p in payouts]
        assert billing.ledger_is_balanced(s)
        invoice_ids, payout_ids = [i.id for i in invoices], [p.id for p in payouts]
        stripe_ids = {i.id: i.stripe_invoice_id for i in invoices}
        due = {i.id: i.amount_due_cents for i in invoices}
    # Booked once each: one payment per invoice, one transfer booking per payout.
    assert _transactions("invoice_payment") == Counter(invoice_ids)
    assert _transactions("payout_sent") == Counter(payout_ids)
    # Made once each on Stripe: whatever the retries, one object per key was really created.
    made = Counter(e["idempotency_key"] for e in procs.log() if not e["replayed"] and e["path"] in
                   ("/v1/invoices", "/v1/transfers"))
    assert all(made[key] == 1 for key in invoice_ids + payout_ids), made
    direct = _direct(procs)
    for invoice_id, stripe_id in stripe_ids.items():
        on_stripe = direct.v1.invoices.retrieve(stripe_id)
        assert on_stripe.status == "paid" and on_stripe.amount_paid == due[invoice_id]
    for payout_id in payout_ids:
        assert len(direct.v1.transfers.list(params={"transfer_group": payout_id}).data) == 1


def test_fault_proxy_passes_what_it_is_not_told_to_break(tmp_path: Path) -> None:
    import http.server

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.server_address[1]}") as fp:
            fp.fail("/x", "error_before", method="GET")
            assert httpx.get(f"{fp.url}/x").status_code == 500
            assert httpx.get(f"{fp.url}/x").text == "ok"
            assert [c.fault for c in fp.calls] == ["error_before", None]
    finally:
        server.shutdown()
        server.server_close()

"""Idempotency-Key on top-ups: a retried top-up is the first one, and Stripe charges once.

Over HTTP against the served app, with Stripe played by localstripe behind the stand-in
that keeps Stripe's idempotency layer and logs every POST with its key.
"""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
import stripe
from sqlalchemy import func, select

from billing import service as billing
from billing.models import Account, LedgerEntry
from billing.payments import service as payments
from billing.payments.models import StripeEvent, Topup
from billing.stripe_gateway import StripeGateway, StripeUnavailable
from kit.db import session_scope
from kit.errors import Conflict
from tests.billing import factories as f
from tests.billing.conftest import LiveApp, wait_for
from tests.fakes.stripe_connect.processes import StripeProcesses

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def _client(stripe_fakes: StripeProcesses) -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_client", base_addresses={"api": stripe_fakes.api_base})


def _customer_with_card(stripe_fakes: StripeProcesses) -> tuple[str, dict[str, str], str]:
    """A prepaid account with a saved card: (account id, its auth header, the card)."""
    from gateway.service import issue_key

    with session_scope() as s:
        account = f.account(s, mode="prepaid")
        customer = payments.ensure_customer(s, account, StripeGateway.from_settings())
        key = issue_key(s, account)
        account_id = account.id
    client = _client(stripe_fakes)
    pm = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    return account_id, {"Authorization": f"Key {key}"}, pm.id


def _intent_posts(stripe_fakes: StripeProcesses, account_id: str, key: str) -> list[bool]:
    """Whether each PaymentIntent POST Stripe saw under this customer key was a replay."""
    stripe_key = payments.stripe_topup_key(account_id, key)
    return [e["replayed"] for e in stripe_fakes.log()
            if e["path"] == "/v1/payment_intents" and e["idempotency_key"] == stripe_key]


def _charges(stripe_fakes: StripeProcesses, account_id: str) -> list[int]:
    """The amounts of the succeeded PaymentIntents Stripe holds for the account's customer."""
    with session_scope() as s:
        customer = s.get(Account, account_id).stripe_customer_id
    intents = _client(stripe_fakes).v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    return [pi.amount for pi in intents if pi.customer == customer and pi.status == "succeeded"]


def _credits(account_id: str) -> tuple[int, int]:
    """(the account's credit in micros, how many top-up credits its ledger holds)."""
    with session_scope() as s:
        ids = [t.id for t in s.scalars(select(Topup).where(Topup.account_id == account_id))]
        posted = s.scalar(select(func.count(func.distinct(LedgerEntry.transaction_id)))
                          .where(LedgerEntry.kind == "topup", LedgerEntry.ref.in_(ids))) if ids else 0
        return billing.credit_balance(s, account_id), posted


def _topup(app: LiveApp, auth: dict[str, str], body: dict, key: str | None) -> httpx.Response:
    headers = {**auth, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{app.base}/v1/billing/topups", json=body, headers=headers, timeout=30)


def test_a_retried_topup_is_the_first_one_and_stripe_charges_once(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    account_id, auth, card = _customer_with_card(stripe_fakes)
    key, body = str(uuid.uuid4()), {"amount_cents": 2_000, "payment_method": card}
    first = _topup(live_app, auth, body, key)
    again = _topup(live_app, auth, body, key)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert again.json() == first.json() and first.json()["status"] == "succeeded"
    assert _intent_posts(stripe_fakes, account_id, key) == [False]  # the retry never reached Stripe
    assert _charges(stripe_fakes, account_id) == [2_000]
    assert _credits(account_id) == (20_000_000, 1)

    # Another body under the same key is refused; without a key a top-up is a new one.
    other = _topup(live_app, auth, {**body, "amount_cents": 3_000}, key)
    assert other.status_code == 409 and other.headers["content-type"].startswith("application/problem+json")
    assert "Idempotency-Key" in other.json()["detail"]
    assert _intent_posts(stripe_fakes, account_id, key) == [False]
    unkeyed = _topup(live_app, auth, body, None)
    assert unkeyed.status_code == 201 and unkeyed.json()["id"] != first.json()["id"]
    assert _credits(account_id) == (40_000_000, 2)


def test_keys_are_per_account(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    key = str(uuid.uuid4())
    answers = []
    for amount in (1_000, 1_500):  # the same key with other bodies, by two accounts
        account_id, auth, card = _customer_with_card(stripe_fakes)
        answers.append(_topup(live_app, auth, {"amount_cents": amount, "payment_method": card}, key))
        assert _credits(account_id) == (amount * 10_000, 1)
    assert [r.status_code for r in answers] == [201, 201]
    assert answers[0].json()["id"] != answers[1].json()["id"]


def test_a_retry_after_a_lost_answer_gets_the_payment_stripe_made(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    account_id, auth, card = _customer_with_card(stripe_fakes)
    key, body = str(uuid.uuid4()), {"amount_cents": 4_200, "payment_method": card}
    # The card is charged, but every answer to it (and to the SDK's two retries) is lost:
    # the call fails and its top-up rolls back.
    stripe_fakes.fault("/v1/payment_intents", "fail_after", count=3)
    lost = _topup(live_app, auth, body, key)
    assert lost.status_code == 503 and lost.headers["Retry-After"]
    retried = _topup(live_app, auth, body, key)
    # 201 when the retry came first, 200 when Stripe's webhook had recorded the payment already.
    assert retried.status_code in (200, 201), retried.text
    assert retried.json()["status"] == "succeeded"
    assert _charges(stripe_fakes, account_id) == [4_200]

    def webhook_seen() -> bool:
        with session_scope() as s:
            outcomes = s.scalars(select(StripeEvent.outcome).where(
                StripeEvent.type == "payment_intent.succeeded",
                StripeEvent.payload["data"]["object"]["id"].as_string() == retried.json()["payment_intent"]))
            return bool(list(outcomes))

    wait_for(webhook_seen, what="the charge's payment_intent.succeeded")
    assert _topup(live_app, auth, body, key).json() == {**retried.json(), "status": "succeeded"}
    assert _credits(account_id) == (42_000_000, 1)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Topup).where(Topup.account_id == account_id)) == 1


def test_a_retry_that_reaches_stripe_gets_the_payment_made_first(committed, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    # No webhook endpoint here: nothing records the charge but the retry itself.
    gateway = StripeGateway.from_settings()
    account_id, _, card = _customer_with_card(stripe_fakes)
    key = str(uuid.uuid4())

    def top_up(amount_cents: int) -> payments.StartedTopup:
        with session_scope() as s:
            account = s.get(Account, account_id)
            started = payments.start_or_replay_topup(s, account, amount_cents=amount_cents, gateway=gateway,
                                                     payment_method=card, idempotency_key=key)
            s.flush()
            s.expunge(started.topup)
            return started

    stripe_fakes.fault("/v1/payment_intents", "fail_after", count=3)
    with pytest.raises(StripeUnavailable):
        top_up(5_000)  # charged, the answers lost, the top-up rolled back
    assert _credits(account_id) == (0, 0)
    with pytest.raises(Conflict, match="Idempotency-Key"):
        top_up(6_000)  # Stripe holds the key for 5,000 cents
    started = top_up(5_000)
    assert started.created and started.topup.status == "succeeded" and started.topup.amount_cents == 5_000
    assert _charges(stripe_fakes, account_id) == [5_000]
    # Made once, its answer lost to the SDK's retries too, refused for 6,000, then replayed.
    assert _intent_posts(stripe_fakes, account_id, key) == [False, True, True, False, True]
    assert _credits(account_id) == (50_000_000, 1)
    assert not top_up(5_000).created


@pytest.mark.timeout(90)
def test_concurrent_duplicates_charge_once(live_app, stripe_fakes) -> None:  # type: ignore[no-untyped-def]
    account_id, auth, card = _customer_with_card(stripe_fakes)
    key, body = str(uuid.uuid4()), {"amount_cents": 1_234, "payment_method": card}
    start = threading.Barrier(6)
    answers: list[httpx.Response] = []

    def call() -> None:
        start.wait(timeout=10)
        answers.append(_topup(live_app, auth, body, key))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(r.status_code for r in answers) == [200] * 5 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert {r.json()["status"] for r in answers} == {"succeeded"}
    assert _intent_posts(stripe_fakes, account_id, key) == [False]
    assert _charges(stripe_fakes, account_id) == [1_234]
    assert _credits(account_id) == (12_340_000, 1)

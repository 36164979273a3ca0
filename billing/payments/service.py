"""Money through Stripe: customers, prepaid top-ups, invoices, Connect payouts, webhooks.

Each function does one idempotent step and records what Stripe said on our rows; the
caller's transaction commits it. Stripe is only ever reached through `StripeGateway`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from billing import ledger
from billing import repository as core_repo
from billing.close.models import Invoice, InvoiceLine, Payout
from billing.models import Account, Payee
from billing.payments import repository as repo
from billing.payments.models import Topup
from billing.service import open_period, post_transaction
from billing.stripe_gateway import (
    LineItem,
    StripeGateway,
    StripeKeyReused,
    StripeRejected,
    StripeUnavailable,
)
from kit.db import utcnow
from kit.errors import Conflict, InvalidInput, NotFound
from kit.ids import new_id
from kit.money import MICROS_PER_CENT

MAX_TOPUP_CENTS = 10_000_000  # $100,000: more than that is a wire, not a card
KEY_REUSED = "this Idempotency-Key was used with a different body"


def ensure_customer(session: Session, account: Account, gateway: StripeGateway) -> str:
    """The account's Stripe customer, created once."""
    if not account.stripe_customer_id:
        account.stripe_customer_id = gateway.create_customer(account_id=account.id, name=account.name,
                                                             email=account.email)
        session.flush()
    return account.stripe_customer_id


# -- top-ups ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StartedTopup:
    """What a top-up call did: the top-up, and whether this call made it (not a replay)."""

    topup: Topup
    created: bool


def topup_body_digest(*, amount_cents: int, payment_method: str | None) -> str:
    """A stable digest of a top-up's body, to tell a retry from a different top-up."""
    body = {"amount_cents": amount_cents, "payment_method": payment_method}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stripe_topup_key(account_id: str, idempotency_key: str) -> str:
    """The Stripe idempotency key of a customer's Idempotency-Key: Stripe's keys are shared by
    every account of ours, so it is scoped to the account (and hashed to fit Stripe's 255)."""
    return f"topup-{account_id}-{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def start_topup(session: Session, account: Account, *, amount_cents: int, gateway: StripeGateway,
                payment_method: str | None = None, idempotency_key: str | None = None) -> Topup:
    """A PaymentIntent for prepaid credit (see `start_or_replay_topup`)."""
    return start_or_replay_topup(session, account, amount_cents=amount_cents, gateway=gateway,
                                 payment_method=payment_method, idempotency_key=idempotency_key).topup


def start_or_replay_topup(session: Session, account: Account, *, amount_cents: int, gateway: StripeGateway,
                          payment_method: str | None = None, idempotency_key: str | None = None) -> StartedTopup:
    """A PaymentIntent for prepaid credit; the credit lands when Stripe confirms the payment.

    Without a saved card the client confirms it with the returned client secret; with one it is
    charged at once. Either way the credit is posted by `credit_topup`, from the webhook or
    from the immediate answer, once. With an `idempotency_key`, the same key and body return
    the first top-up (never a second charge), and the same key with another body is a Conflict.
    """
    if account.billing_mode != "prepaid":
        raise InvalidInput("only prepaid accounts hold credit; postpaid usage is invoiced monthly")
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or not 50 <= amount_cents <= MAX_TOPUP_CENTS:
        raise InvalidInput(f"a top-up is a whole number of cents from 50 to {MAX_TOPUP_CENTS}")
    digest = topup_body_digest(amount_cents=amount_cents, payment_method=payment_method)
    if idempotency_key:
        existing = repo.topup_by_idempotency_key(session, account.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest)
        topup = repo.insert_keyed_topup(session, {
            "id": new_id("top"), "account_id": account.id, "amount_cents": amount_cents,
            "currency": account.currency, "status": "pending", "idempotency_key": idempotency_key,
            "body_digest": digest, "created_at": utcnow()})
        if topup is None:  # a concurrent call with the same key committed first
            existing = repo.topup_by_idempotency_key(session, account.id, idempotency_key)
            if existing is None:
                raise Conflict(KEY_REUSED)
            return _replay(existing, digest)
        # The same Stripe key and parameters on every attempt: an attempt whose answer was lost
        # rolled its row back, and Stripe answers the retry with that attempt's PaymentIntent.
        stripe_key = stripe_topup_key(account.id, idempotency_key)
        metadata = {"account_id": account.id, "idempotency_key": idempotency_key, "body_digest": digest}
    else:
        topup = Topup(account_id=account.id, amount_cents=amount_cents, currency=account.currency)
        session.add(topup)
        session.flush()
        stripe_key, metadata = topup.id, {"topup_id": topup.id, "account_id": account.id}
    customer = ensure_customer(session, account, gateway)
    try:
        intent = gateway.create_payment_intent(
            amount_cents=amount_cents, currency=account.currency, customer=customer, idempotency_key=stripe_key,
            metadata=metadata, payment_method=payment_method)
    except StripeKeyReused as exc:
        if idempotency_key:  # an earlier attempt, rolled back here, reached Stripe with another body
            raise Conflict(KEY_REUSED) from exc
        raise
    topup.payment_intent_id, topup.client_secret = intent["id"], intent["client_secret"]
    session.flush()
    if intent["status"] == "succeeded":
        credit_topup(session, topup.id, amount_cents=intent["amount"], currency=intent["currency"])
    return StartedTopup(topup, True)


def _replay(existing: Topup, digest: str) -> StartedTopup:
    """The earlier top-up of an Idempotency-Key, if this is the same body (409 otherwise)."""
    if existing.body_digest != digest:
        raise Conflict(KEY_REUSED)
    return StartedTopup(existing, False)


def credit_topup(session: Session, topup_id: str, *, amount_cents: int, currency: str) -> bool:
    """Post a succeeded top-up's credit once; False when it was credited already."""
    topup = repo.topup_for_update(session, topup_id)
    if topup is None:
        raise NotFound(f"no top-up {topup_id}")
    if topup.status == "succeeded":
        return False
    if amount_cents != topup.amount_cents or currency != topup.currency:
        topup.last_error = f"Stripe reported {amount_cents} {currency}, expected {topup.amount_cents} {topup.currency}"
        raise Conflict(topup.last_error)
    amount = topup.amount_cents * MICROS_PER_CENT
    post_transaction(session, [(ledger.PLATFORM_STRIPE, amount), (ledger.customer_credit(topup.account_id), -amount)],
                     currency=topup.currency, kind="topup", period=open_period(session), ref=topup.id,
                     memo=f"card top-up {topup.payment_intent_id}")
    topup.status, topup.credited_at = "succeeded", utcnow()
    return True


# -- invoices -------------------------------------------------------------------------------

def allocate_cents(lines: list[InvoiceLine], amount_due_cents: int) -> tuple[list[int], int]:
    """Whole cents per line (floored) and the cents the carried sub-cent balances add up to."""
    cents = [line.amount_micros // MICROS_PER_CENT for line in lines]
    return cents, amount_due_cents - sum(cents)


def push_invoice(session: Session, invoice_id: str, gateway: StripeGateway) -> str:
    """Send a closed period's invoice to Stripe, finalize it and charge the card on file.

    Safe to repeat: each Stripe object is keyed by our invoice and line ids, and the ids
    Stripe returns are kept, so a retry picks up where the last attempt stopped.
    """
    invoice = repo.invoice_for_update(session, invoice_id, skip_locked=True)
    if invoice is None or invoice.kind != "invoice" or invoice.status != "draft":
        return invoice.status if invoice else "busy"
    account = session.get(Account, invoice.account_id)
    assert account is not None
    invoice.attempts += 1
    try:
        customer = ensure_customer(session, account, gateway)
        if not invoice.stripe_invoice_id:
            invoice.stripe_invoice_id = gateway.create_invoice(
                customer=customer, currency=invoice.currency, idempotency_key=invoice.id,
                metadata={"invoice_id": invoice.id, "account_id": account.id, "period": invoice.period},
                description=f"mediagate usage, {invoice.period}")
            session.flush()
        lines = repo.invoice_lines(session, invoice.id)
        cents, carried = allocate_cents(lines, invoice.amount_due_cents)
        for line, amount in zip(lines, cents, strict=True):
            line.amount_cents = amount
            if amount and not line.stripe_item_id:
                line.stripe_item_id = gateway.add_invoice_item(
                    invoice=invoice.stripe_invoice_id, customer=customer, currency=invoice.currency,
                    line=LineItem(line.description, amount, line.id, {"line_id": line.id}))
                session.flush()
        if carried:
            gateway.add_invoice_item(
                invoice=invoice.stripe_invoice_id, customer=customer, currency=invoice.currency,
                line=LineItem("Sub-cent amounts carried from earlier usage", carried, f"{invoice.id}-carry",
                              {"invoice_id": invoice.id}))
        on_stripe = gateway.retrieve_invoice(invoice.stripe_invoice_id)
        if on_stripe["status"] == "draft" and on_stripe["total"] != invoice.amount_due_cents:
            raise StripeRejected(f"Stripe's draft totals {on_stripe['total']} cents, "
                                 f"ours {invoice.amount_due_cents}: not finalizing")
        result = gateway.finalize_and_pay(invoice.stripe_invoice_id, idempotency_key=invoice.id)
    except StripeUnavailable as exc:
        invoice.last_error = exc.message[:1000]
        return invoice.status
    except StripeRejected as exc:
        invoice.status, invoice.last_error = "failed", exc.message[:1000]
        return invoice.status
    invoice.status, invoice.sent_at = "open", utcnow()
    invoice.last_error = result.get("payment_error")
    if result["status"] == "paid":
        mark_invoice_paid(session, invoice, amount_paid_cents=int(result["amount_paid"]))
    return invoice.status


def mark_invoice_paid(session: Session, invoice: Invoice, *, amount_paid_cents: int) -> bool:
    """Record an invoice's payment once: Stripe's cash against the customer's receivable."""
    if invoice.status == "paid" or core_repo.has_transaction(session, kind="invoice_payment", ref=invoice.id):
        return False
    if amount_paid_cents != invoice.amount_due_cents:
        invoice.last_error = f"Stripe reports {amount_paid_cents} cents paid of {invoice.amount_due_cents}"
    amount = amount_paid_cents * MICROS_PER_CENT
    if amount:
        post_transaction(session, [(ledger.PLATFORM_STRIPE, amount),
                                   (ledger.customer_receivable(invoice.account_id), -amount)],
                         currency=invoice.currency, kind="invoice_payment", period=open_period(session),
                         ref=invoice.id, memo=f"payment of invoice {invoice.stripe_invoice_id}")
    invoice.status, invoice.amount_paid_cents, invoice.paid_at = "paid", amount_paid_cents, utcnow()
    return True


# -- payouts -----------------------------------------------------------------------------------

def onboard_payee(session: Session, payee: Payee, gateway: StripeGateway, *, email: str | None = None,
                  country: str = "US") -> str:
    """The payee's Stripe Connect (Express) account, created once."""
    if not payee.stripe_account_id:
        payee.stripe_account_id = gateway.create_connect_account(payee_id=payee.id, email=email, country=country)
        session.flush()
    return payee.stripe_account_id


def send_payout(session: Session, payout_id: str, gateway: StripeGateway) -> str:
    """Transfer a pending payout to the payee's connected account, at most once.

    The transfer is keyed by the payout id, and we first look for a transfer already made
    under it: idempotency keys expire after 24 h, transfer groups do not, and an attempt that
    died before it could record anything (not even that it was made) leaves no trace here.
    """
    payout = repo.payout_for_update(session, payout_id, skip_locked=True)
    if payout is None or payout.status != "pending":
        return payout.status if payout else "busy"
    payout.attempts += 1
    description = f"mediagate statement {payout.period}"
    try:
        transfer = gateway.find_transfer(payout.id)
        transfer = transfer or gateway.create_transfer(amount_cents=payout.amount_cents, currency=payout.currency,
                                                       destination=payout.destination, payout_id=payout.id,
                                                       description=description)
    except StripeUnavailable as exc:
        payout.last_error = exc.message[:1000]
        return payout.status
    except StripeRejected as exc:
        payout.status, payout.last_error = "failed", exc.message[:1000]
        _owe_again(session, payout, from_account=ledger.PAYOUTS_IN_TRANSIT, amount_cents=payout.amount_cents,
                   why=f"payout failed: {exc.message}")
        return payout.status
    amount = payout.amount_cents * MICROS_PER_CENT
    post_transaction(session, [(ledger.PAYOUTS_IN_TRANSIT, amount), (ledger.PLATFORM_STRIPE, -amount)],
                     currency=payout.currency, kind="payout_sent", period=open_period(session), ref=payout.id,
                     memo=f"Connect transfer {transfer['id']}")
    payout.status, payout.stripe_transfer_id, payout.paid_at, payout.last_error = "paid", transfer["id"], utcnow(), None
    return payout.status


def _owe_again(session: Session, payout: Payout, *, from_account: str, amount_cents: int, why: str) -> None:
    payee = session.get(Payee, payout.payee_id)
    assert payee is not None
    amount = amount_cents * MICROS_PER_CENT
    # Lands in the open period, so the payee's next statement credits it back.
    post_transaction(session, [(from_account, amount), (ledger.payee_account(payee.kind, payee.ref), -amount)],
                     currency=payout.currency, kind="payout_reversal", period=open_period(session),
                     ref=payout.id, memo=why)


def reverse_payout(session: Session, payout: Payout, *, amount_reversed_cents: int) -> bool:
    """Stripe reversed a transfer: the money is back with us and owed to the payee again."""
    if payout.status != "paid" or core_repo.has_transaction(session, kind="payout_reversal", ref=payout.id):
        return False
    payout.status = "reversed"
    _owe_again(session, payout, from_account=ledger.PLATFORM_STRIPE, amount_cents=amount_reversed_cents,
               why=f"transfer {payout.stripe_transfer_id} reversed")
    return True


# -- webhooks ---------------------------------------------------------------------------------

def handle_event(session: Session, event: dict[str, Any]) -> str:
    """Act on a verified Stripe event once; its id is stored first, so a redelivery is a no-op.

    Storing and acting share the caller's transaction: if acting fails, nothing is stored
    and Stripe's redelivery tries again.
    """
    if not event.get("id"):
        raise InvalidInput("a Stripe event needs an id")
    if not repo.store_event(session, event):
        return "duplicate"
    handler = HANDLERS.get(event.get("type", ""))
    outcome = handler(session, (event.get("data") or {}).get("object") or {}) if handler else "ignored"
    repo.set_outcome(session, event["id"], outcome)
    return outcome


def _intent_succeeded(session: Session, intent: dict[str, Any]) -> str:
    topup = repo.topup_by_intent(session, intent.get("id", ""))
    metadata = intent.get("metadata") or {}
    if topup is not None:
        topup_id = topup.id
    elif metadata.get("topup_id") or metadata.get("idempotency_key"):
        topup_id = _topup_from_stripe(session, intent, metadata)
    else:
        return "ignored: not a top-up"
    if topup_id is None:
        return "ignored: unknown top-up"
    try:
        credited = credit_topup(session, topup_id, amount_cents=int(intent.get("amount") or 0),
                                currency=str(intent.get("currency") or ""))
    except NotFound:
        return "ignored: unknown top-up"
    except Conflict as exc:
        return f"refused: {exc.message}"
    return "credited" if credited else "already credited"


def _topup_from_stripe(session: Session, intent: dict[str, Any], metadata: dict[str, Any]) -> str | None:
    """Keep the top-up Stripe charged for even when our side never committed it; its id.

    A card charged at once whose answer was lost (a Stripe 500 or a timeout after the charge)
    fails the top-up call, and its row rolls back with it; Stripe's record, signed and
    carrying our ids in its metadata, is then what says the money arrived. Inserting waits
    for a top-up call still in flight, so whichever lands first is the one credited. A
    top-up made under an Idempotency-Key is recorded under that key, so that the customer's
    retry finds it instead of paying again.
    """
    account_id = metadata.get("account_id")
    account = session.get(Account, account_id) if account_id else None
    amount = int(intent.get("amount") or 0)
    intent_id = intent.get("id") or ""
    if account is None or amount <= 0 or not intent_id:
        return metadata.get("topup_id")
    key = metadata.get("idempotency_key") or None
    values = {
        "id": metadata.get("topup_id") or new_id("top"), "account_id": account.id, "amount_cents": amount,
        "currency": str(intent.get("currency") or account.currency), "status": "pending",
        "payment_intent_id": intent_id, "created_at": utcnow(), "idempotency_key": key,
        "body_digest": metadata.get("body_digest") if key else None,
        "last_error": "recorded from Stripe's payment_intent.succeeded: the top-up call did not complete"}
    if not repo.insert_topup_if_new(session, values) and key and repo.topup_by_intent(session, intent_id) is None:
        # The key's top-up is paid by another PaymentIntent: this payment is kept apart.
        repo.insert_topup_if_new(session, {**values, "idempotency_key": None, "body_digest": None})
    found = repo.topup_by_intent(session, intent_id)
    return found.id if found is not None else None


def _intent_failed(session: Session, intent: dict[str, Any]) -> str:
    topup = repo.topup_by_intent(session, intent.get("id", ""))
    if topup is None or topup.status == "succeeded":
        return "ignored"
    topup.status = "failed" if intent.get("status") != "canceled" else "canceled"
    topup.last_error = ((intent.get("last_payment_error") or {}).get("message") or "payment failed")[:1000]
    return topup.status


def _invoice_paid(session: Session, obj: dict[str, Any]) -> str:
    invoice = repo.invoice_by_stripe_id(session, obj.get("id", ""))
    if invoice is None:
        return "ignored: unknown invoice"
    invoice = repo.invoice_for_update(session, invoice.id)
    assert invoice is not None
    return "paid" if mark_invoice_paid(session, invoice, amount_paid_cents=int(obj.get("amount_paid") or 0)) \
        else "already paid"


def _invoice_failed(session: Session, obj: dict[str, Any]) -> str:
    invoice = repo.invoice_by_stripe_id(session, obj.get("id", ""))
    if invoice is None:
        return "ignored: unknown invoice"
    invoice.last_error = "the card on file was declined; Stripe retries"
    return "payment failed"


def _transfer_reversed(session: Session, obj: dict[str, Any]) -> str:
    payout = repo.payout_by_transfer(session, obj.get("id", ""))
    if payout is None:
        return "ignored: unknown transfer"
    payout = repo.payout_for_update(session, payout.id)
    assert payout is not None
    reversed_ = reverse_payout(session, payout, amount_reversed_cents=int(obj.get("amount_reversed") or 0))
    return "reversed" if reversed_ else "already reversed"


HANDLERS = {
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "payment_intent.canceled": _intent_failed,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_failed,
    "transfer.reversed": _transfer_reversed,
}

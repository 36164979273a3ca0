"""Every call mediagate makes to Stripe, through the official SDK, in this one module.

Amounts arrive here in whole cents: rounding from micro-units happens in the callers that
carry the remainders (invoices and statements), and nowhere else. Every write carries an
idempotency key derived from our own row id, so a retry after an error or a timeout, by the
SDK (`max_network_retries`) or by our outbox tasks, gets Stripe's first answer instead of a
second charge or transfer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import stripe

from billing.settings import DEV_STRIPE_KEY, get_billing_settings
from kit.errors import AppError


class StripeUnavailable(AppError):
    """Stripe could not be reached or failed on its side: retry later with the same key."""

    status_code, type, title = 503, "stripe-unavailable", "Payment provider unavailable"
    retry_after_s = 5

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": str(self.retry_after_s)})
        super().__init__(message, **kw)


class StripeRejected(AppError):
    """Stripe refused the request (a card declined, an invalid account): retrying will not help."""

    status_code, type, title = 402, "stripe-rejected", "Payment provider refused"


class StripeKeyReused(StripeRejected):
    """Stripe holds this idempotency key for a request with other parameters."""


@dataclass(frozen=True)
class LineItem:
    description: str
    amount_cents: int
    idempotency_key: str
    metadata: dict[str, str]


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise StripeUnavailable(f"Stripe is unreachable: {exc.user_message or exc}") from exc
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:  # our configuration, not the object
        raise StripeUnavailable(f"Stripe refused our API key: {exc.user_message or exc}") from exc
    except stripe.IdempotencyError as exc:  # the same key with other parameters: a reused customer key, or our bug
        raise StripeKeyReused(f"Stripe refused a reused idempotency key: {exc.user_message or exc}") from exc
    except stripe.StripeError as exc:
        status = exc.http_status or 0
        if status >= 500 or status in (409, 429) or status == 0:
            raise StripeUnavailable(f"Stripe failed: {exc.user_message or exc}") from exc
        raise StripeRejected(exc.user_message or str(exc), code=exc.code) from exc


class StripeGateway:
    """Customers, top-ups, invoices, Connect accounts and transfers, webhook verification."""

    def __init__(self, client: stripe.StripeClient, webhook_secret: str) -> None:
        self.client = client
        self.webhook_secret = webhook_secret

    @classmethod
    def from_settings(cls) -> StripeGateway:
        """A gateway configured from MEDIAGATE_STRIPE_* settings."""
        s = get_billing_settings()
        bases = {"api": s.stripe_api_base, "connect": s.stripe_api_base} if s.stripe_api_base else None
        client = stripe.StripeClient(
            s.stripe_api_key, base_addresses=bases,  # type: ignore[arg-type]
            max_network_retries=s.stripe_max_network_retries,
            http_client=stripe.RequestsClient(timeout=s.stripe_timeout_s),
        )
        return cls(client, s.stripe_webhook_secret)

    # -- customers and top-ups ------------------------------------------------------------

    def create_customer(self, *, account_id: str, name: str, email: str | None) -> str:
        """A Stripe customer for an account (one per account, whatever the retries)."""
        params: dict[str, Any] = {"name": name, "metadata": {"account_id": account_id}}
        if email:
            params["email"] = email
        customer = _call(self.client.v1.customers.create, params=params,
                         options={"idempotency_key": f"customer-{account_id}"})
        return str(customer.id)

    def create_payment_intent(self, *, amount_cents: int, currency: str, customer: str, idempotency_key: str,
                              metadata: dict[str, str], payment_method: str | None = None) -> dict[str, Any]:
        """A PaymentIntent for a top-up; confirmed at once when a saved card is given."""
        params: dict[str, Any] = {"amount": amount_cents, "currency": currency, "customer": customer,
                                  "payment_method_types": ["card"], "metadata": metadata}
        if payment_method:
            params.update(payment_method=payment_method, confirm=True)
        pi = _call(self.client.v1.payment_intents.create, params=params,
                   options={"idempotency_key": idempotency_key})
        return {"id": pi.id, "status": pi.status, "client_secret": pi.client_secret,
                "amount": pi.amount, "currency": pi.currency}

    def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        pi = _call(self.client.v1.payment_intents.retrieve, payment_intent_id)
        return {"id": pi.id, "status": pi.status, "amount": pi.amount, "currency": pi.currency,
                "metadata": dict(pi.metadata or {})}

    # -- invoices --------------------------------------------------------------------------

    def create_invoice(self, *, customer: str, currency: str, idempotency_key: str, metadata: dict[str, str],
                       description: str) -> str:
        """A draft invoice that takes only the items we add to it."""
        invoice = _call(self.client.v1.invoices.create, params={
            "customer": customer, "currency": currency, "collection_method": "charge_automatically",
            "auto_advance": False, "pending_invoice_items_behavior": "exclude", "metadata": metadata,
            "description": description}, options={"idempotency_key": idempotency_key})
        return str(invoice.id)

    def add_invoice_item(self, *, invoice: str, customer: str, currency: str, line: LineItem) -> str:
        item = _call(self.client.v1.invoice_items.create, params={
            "customer": customer, "invoice": invoice, "currency": currency, "amount": line.amount_cents,
            "description": line.description, "metadata": line.metadata},
            options={"idempotency_key": line.idempotency_key})
        return str(item.id)

    def retrieve_invoice(self, invoice_id: str) -> dict[str, Any]:
        inv = _call(self.client.v1.invoices.retrieve, invoice_id)
        return {"id": inv.id, "status": inv.status, "amount_due": inv.amount_due, "amount_paid": inv.amount_paid,
                "total": inv.total}

    def finalize_and_pay(self, invoice_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """Finalize a draft and charge the customer's default card; a decline leaves it open."""
        current = self.retrieve_invoice(invoice_id)
        if current["status"] == "draft":
            _call(self.client.v1.invoices.finalize_invoice, invoice_id,
                  options={"idempotency_key": f"{idempotency_key}-finalize"})
            current = self.retrieve_invoice(invoice_id)
        if current["status"] == "open":
            try:
                _call(self.client.v1.invoices.pay, invoice_id, options={"idempotency_key": f"{idempotency_key}-pay"})
            except StripeRejected as exc:  # Stripe's own retries (and the webhook) take it from here
                return {**self.retrieve_invoice(invoice_id), "payment_error": exc.message}
            current = self.retrieve_invoice(invoice_id)
        return current

    # -- Connect -----------------------------------------------------------------------------

    def create_connect_account(self, *, payee_id: str, email: str | None, country: str) -> str:
        """An Express connected account for a partner or licensor."""
        params: dict[str, Any] = {"type": "express", "country": country, "metadata": {"payee_id": payee_id},
                                  "capabilities": {"transfers": {"requested": True}}}
        if email:
            params["email"] = email
        account = _call(self.client.v1.accounts.create, params=params,
                        options={"idempotency_key": f"connect-{payee_id}"})
        return str(account.id)

    def find_transfer(self, transfer_group: str) -> dict[str, Any] | None:
        """A transfer already made for this payout, if any (idempotency keys expire after 24 h)."""
        found = _call(self.client.v1.transfers.list, params={"transfer_group": transfer_group, "limit": 1})
        if not found.data:
            return None
        tr = found.data[0]
        return {"id": tr.id, "amount": tr.amount, "reversed": tr.reversed}

    def create_transfer(self, *, amount_cents: int, currency: str, destination: str, payout_id: str,
                        description: str) -> dict[str, Any]:
        """Move a payout to the payee's connected account; keyed by our payout id."""
        tr = _call(self.client.v1.transfers.create, params={
            "amount": amount_cents, "currency": currency, "destination": destination, "transfer_group": payout_id,
            "description": description, "metadata": {"payout_id": payout_id}},
            options={"idempotency_key": payout_id})
        return {"id": tr.id, "amount": tr.amount, "reversed": tr.reversed}

    # -- webhooks ------------------------------------------------------------------------

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, if Stripe signed this payload with our endpoint secret (else 400)."""
        if not signature:
            raise AppError("missing Stripe-Signature header", 400, type="bad-signature")
        try:
            stripe.Webhook.construct_event(payload, signature, self.webhook_secret)
        except (ValueError, stripe.SignatureVerificationError) as exc:
            raise AppError(f"the Stripe signature does not verify: {exc}", 400, type="bad-signature") from exc
        # Kept exactly as Stripe sent it (the SDK's objects turn decimal strings into Decimals).
        return json.loads(payload)


def configured() -> bool:
    """Whether Stripe has been set up (a real key, or a base URL such as a test stand-in)."""
    s = get_billing_settings()
    return s.stripe_api_key != DEV_STRIPE_KEY or bool(s.stripe_api_base)


@functools.cache
def get_gateway() -> StripeGateway:
    """The process-wide Stripe gateway."""
    return StripeGateway.from_settings()

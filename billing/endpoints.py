"""Billing's HTTP surface: partner pricing and statements, Stripe webhooks, finance pages.

`router` is what the app mounts; it carries every billing route except the customer ones,
which need the gateway's key auth and come from `customer_router(account_dependency)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Header, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from billing import service
from billing.close.models import Invoice
from billing.models import Account
from billing.payments import service as payments
from billing.reports import service as reports_service
from billing.reports.endpoints import router as finance_router
from billing.schemas import BalanceOut, PricingIn, PricingOut, StatementOut, TopupIn, TopupOut
from billing.stripe_gateway import get_gateway
from kit.db import get_session
from kit.errors import NotFound
from kit.web import router as make_router
from partners import repository as partners_repo
from partners import service as partners_service
from partners.auth import current_partner
from partners.models import Partner

partner_router = make_router(prefix="/v1/partner", tags=["partner"])
stripe_router = make_router(prefix="/v1/stripe", tags=["stripe"])


@partner_router.put("/models/{model_slug}/pricing", response_model=PricingOut)
def set_pricing(
    model_slug: str, body: PricingIn, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> PricingOut:
    """Set the model's license terms and price card, effective now (the past is never repriced)."""
    model = partners_service.get_model(session, partner, model_slug)
    version_id = None
    if body.version is not None:
        version = partners_repo.version_by_number(session, model.id, body.version)
        if version is None:
            raise NotFound(f"model {model_slug!r} has no version {body.version}")
        version_id = version.id
    _, card = service.set_pricing(
        session, model, tier=body.tier, unit=body.unit, unit_price_micros=body.unit_price_micros,
        currency=body.currency, licensor=body.licensor, royalty_bps=body.royalty_bps,
        platform_fee_bps=body.platform_fee_bps, tiers=[t.model_dump() for t in body.tiers] if body.tiers else None,
        minimum_micros=body.minimum_micros, royalty_per_unit_micros=body.royalty_per_unit_micros,
        included_units=body.included_units, minimum_fee_micros=body.minimum_fee_micros,
        hosting_fee_per_gpu_second_micros=body.hosting_fee_per_gpu_second_micros, version_id=version_id,
    )
    return PricingOut(**body.model_dump(), model=f"{partner.slug}/{model.slug}", effective_from=card.effective_from)


@partner_router.get("/statements", response_model=list[StatementOut])
def statements(partner: Partner = Depends(current_partner), session: Session = Depends(get_session)) -> list[StatementOut]:
    """The partner's monthly statements: gross, fees, royalties, refunds, net, payout and carry."""
    return reports_service.partner_statements(session, partner)


@partner_router.get("/statements/{period}", response_model=list[StatementOut])
def statement(period: str, partner: Partner = Depends(current_partner),
              session: Session = Depends(get_session)) -> list[StatementOut]:
    """The partner's statement(s) for one closed period, with lines per model."""
    found = [s for s in reports_service.partner_statements(session, partner) if s.period == period]
    if not found:
        raise NotFound(f"no statement for {period}; statements are written when a period closes")
    return found


@stripe_router.post("/webhooks", include_in_schema=False)
async def stripe_webhook(request: Request, session: Session = Depends(get_session)) -> dict[str, Any]:
    """Stripe's events: verified by signature, stored once by id, then acted on."""
    payload = await request.body()
    event = get_gateway().verify_event(payload, request.headers.get("stripe-signature"))
    outcome = await run_in_threadpool(payments.handle_event, session, event)
    return {"received": True, "outcome": outcome}


def customer_router(account: Callable[..., Account]) -> APIRouter:
    """The customer routes, authenticated by the gateway's key dependency `account`."""
    r = make_router(prefix="/v1/billing", tags=["billing"])

    @r.post("/topups", response_model=TopupOut, status_code=201, responses={
        200: {"model": TopupOut, "description": "An earlier top-up with this Idempotency-Key"},
        409: {"description": "The Idempotency-Key was used with another body",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}})
    def create_topup(body: TopupIn, response: Response, acct: Account = Depends(account),
                     session: Session = Depends(get_session),
                     idempotency_key: str | None = Header(default=None, max_length=255, description=(
                         "Same key and body within 24 h return the first top-up (200, same id and status), "
                         "never a second charge; the same key with another body is 409"))) -> TopupOut:
        """Add prepaid credit by card: confirm the PaymentIntent client-side, or pass a saved card."""
        started = payments.start_or_replay_topup(
            session, acct, amount_cents=body.amount_cents, gateway=get_gateway(),
            payment_method=body.payment_method, idempotency_key=idempotency_key)
        topup = started.topup
        if not started.created:
            response.status_code = 200
        return TopupOut(id=topup.id, status=topup.status, amount_cents=topup.amount_cents, currency=topup.currency,
                        payment_intent=topup.payment_intent_id, client_secret=topup.client_secret)

    @r.get("/balance", response_model=BalanceOut)
    def balance(acct: Account = Depends(account), session: Session = Depends(get_session)) -> BalanceOut:
        """The account's prepaid credit."""
        return BalanceOut(billing_mode=acct.billing_mode, currency=acct.currency,
                          credit_micros=service.credit_balance(session, acct.id))

    @r.get("/invoices")
    def invoices(acct: Account = Depends(account), session: Session = Depends(get_session)) -> list[dict[str, Any]]:
        """The account's invoices and prepaid statements, newest first."""
        rows = session.scalars(select(Invoice).where(Invoice.account_id == acct.id).order_by(Invoice.period.desc()))
        return [{"id": i.id, "period": i.period, "kind": i.kind, "currency": i.currency, "total_micros": i.total_micros,
                 "amount_due_cents": i.amount_due_cents, "status": i.status, "stripe_invoice": i.stripe_invoice_id}
                for i in rows]

    return r


router = APIRouter()
for sub in (partner_router, stripe_router, finance_router):
    router.include_router(sub)

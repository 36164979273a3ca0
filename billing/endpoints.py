"""Billing endpoints partners use: their models' license terms and price cards."""

from __future__ import annotations

from fastapi import Depends
from sqlalchemy.orm import Session

from billing import service
from billing.schemas import PricingIn, PricingOut
from kit.db import get_session
from kit.web import router as make_router
from partners import service as partners_service
from partners.auth import current_partner
from partners.models import Partner

router = make_router(prefix="/v1/partner", tags=["partner"])


@router.put("/models/{model_slug}/pricing", response_model=PricingOut)
def set_pricing(
    model_slug: str, body: PricingIn, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> PricingOut:
    """Set the model's license terms and price card, effective now (the past is never repriced)."""
    model = partners_service.get_model(session, partner, model_slug)
    license_, card = service.set_pricing(
        session, model, tier=body.tier, unit=body.unit, unit_price_micros=body.unit_price_micros,
        currency=body.currency, licensor=body.licensor, royalty_bps=body.royalty_bps,
        platform_fee_bps=body.platform_fee_bps,
    )
    return PricingOut(**body.model_dump(), model=f"{partner.slug}/{model.slug}",
                      effective_from=card.effective_from)

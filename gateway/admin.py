"""The operators' admin API: onboard partners and customer accounts."""

from __future__ import annotations

from fastapi import Depends
from sqlalchemy.orm import Session

from billing import service as billing
from gateway import service
from gateway.auth import admin
from gateway.schemas import AccountCreate, AccountCreated
from kit.db import get_session
from kit.web import router as make_router
from partners import service as partners
from partners.schemas import PartnerCreate, PartnerCreated

router = make_router(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin)])


@router.post("/partners", response_model=PartnerCreated, status_code=201)
def create_partner(body: PartnerCreate, session: Session = Depends(get_session)) -> PartnerCreated:
    """Onboard a partner organisation; returns its first API key once."""
    partner, key = partners.create_partner(session, slug=body.slug, name=body.name)
    return PartnerCreated(id=partner.id, slug=partner.slug, name=partner.name, api_key=key)


@router.post("/accounts", response_model=AccountCreated, status_code=201)
def create_account(body: AccountCreate, session: Session = Depends(get_session)) -> AccountCreated:
    """Open a customer account; returns its first API key once."""
    account = billing.create_account(session, name=body.name, billing_mode=body.billing_mode,
                                     commercial_use=body.commercial_use)
    return AccountCreated(id=account.id, name=account.name, api_key=service.issue_key(session, account))

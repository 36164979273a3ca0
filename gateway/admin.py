"""The operators' admin API: onboard partners and customer accounts, SLA pools and limits."""

from __future__ import annotations

from fastapi import Depends
from sqlalchemy.orm import Session

from billing import service as billing
from billing.models import Account
from gateway import pools, service
from gateway import repository as repo
from gateway.auth import admin
from gateway.cache import forget
from gateway.models import AccountSettings
from gateway.schemas import AccountCreate, AccountCreated, AccountLimitsIn, PoolIn, PoolOut
from kit.db import get_session, utcnow
from kit.errors import NotFound
from kit.web import router as make_router
from partners import repository as partners_repo
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


@router.post("/pools", response_model=PoolOut, status_code=201)
def create_pool(body: PoolIn, session: Session = Depends(get_session)) -> PoolOut:
    """Create an SLA pool; a dedicated pool routes its account's requests (for one model or all)."""
    model_id = None
    if body.model:
        owner, _, slug = body.model.partition("/")
        model = partners_repo.model_by_slug(session, owner, slug)
        if model is None:
            raise NotFound(f"no model {body.model}")
        model_id = model.id
    if body.account_id is not None and session.get(Account, body.account_id) is None:
        raise NotFound(f"no account {body.account_id}")
    pool = pools.create_pool(session, name=body.name, kind=body.kind, account_id=body.account_id,
                             model_id=model_id, p95_queue_ms_target=body.p95_queue_ms_target)
    return PoolOut.model_validate(pool, from_attributes=True)


@router.get("/pools", response_model=list[PoolOut])
def list_pools(session: Session = Depends(get_session)) -> list[PoolOut]:
    """Every SLA pool."""
    return [PoolOut.model_validate(p, from_attributes=True) for p in repo.all_pools(session)]


@router.put("/accounts/{account_id}/limits", response_model=AccountLimitsIn)
def set_limits(account_id: str, body: AccountLimitsIn, session: Session = Depends(get_session)) -> AccountLimitsIn:
    """Set an account's rate limit, concurrency limit and retention (null: the defaults)."""
    if session.get(Account, account_id) is None:
        raise NotFound(f"no account {account_id}")
    row = repo.account_settings(session, account_id)
    if row is None:
        row = AccountSettings(account_id=account_id)
        session.add(row)
    row.rate_per_s, row.rate_burst = body.rate_per_s, body.rate_burst
    row.max_concurrency, row.retention_days = body.max_concurrency, body.retention_days
    row.updated_at = utcnow()
    session.flush()
    forget("limits", account_id)
    return body

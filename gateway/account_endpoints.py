"""The customer API's account side: webhook endpoints and secret, settings, SLA pool stats."""

from __future__ import annotations

from fastapi import Depends, Path, Query, Response
from sqlalchemy.orm import Session

from billing.models import Account
from gateway import pools, webhooks
from gateway import repository as repo
from gateway.auth import account_limits, account_reader, account_writer
from gateway.cache import forget
from gateway.models import AccountSettings, WebhookEndpoint
from gateway.openapi import problems
from gateway.schemas import (
    AccountSettingsOut,
    AccountSettingsPatch,
    PoolStats,
    WebhookEndpointIn,
    WebhookEndpointOut,
    WebhookEndpointPatch,
    WebhookSecretOut,
)
from kit.db import get_session, utcnow
from kit.errors import Conflict, NotFound
from kit.web import router as make_router

router = make_router(prefix="/v1", responses=problems(401, 403, 429))
EndpointId = Path(max_length=40, description="The webhook endpoint's id, `whe_…`")
MAX_ENDPOINTS = 20


def _out(e: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(id=e.id, url=e.url, events=e.events or list(webhooks.TERMINAL),
                              description=e.description, enabled=e.enabled, created_at=e.created_at)


def _endpoint(session: Session, account: Account, endpoint_id: str) -> WebhookEndpoint:
    found = repo.endpoint_of_account(session, endpoint_id, account.id)
    if found is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return found


@router.post("/webhooks", response_model=WebhookEndpointOut, status_code=201, tags=["webhooks"],
             responses=problems(409, 413, 422))
def create_endpoint(body: WebhookEndpointIn, account: Account = Depends(account_writer),
                    session: Session = Depends(get_session)) -> WebhookEndpointOut:
    """Add an account-wide webhook endpoint: every request's matching events are sent to it."""
    if len(repo.endpoints_of(session, account.id)) >= MAX_ENDPOINTS:
        raise Conflict(f"an account has at most {MAX_ENDPOINTS} webhook endpoints")
    webhooks.check_url(str(body.url))
    endpoint = WebhookEndpoint(account_id=account.id, url=str(body.url),
                               events=webhooks.normalise_events(body.events) or [],
                               description=body.description, enabled=body.enabled)
    session.add(endpoint)
    session.flush()
    webhooks.account_secret(session, account.id)
    forget("webhook-endpoints", account.id)
    return _out(endpoint)


@router.get("/webhooks", response_model=list[WebhookEndpointOut], tags=["webhooks"])
def list_endpoints(account: Account = Depends(account_reader),
                   session: Session = Depends(get_session)) -> list[WebhookEndpointOut]:
    """The account's webhook endpoints."""
    return [_out(e) for e in repo.endpoints_of(session, account.id)]


@router.get("/webhooks/secret", response_model=WebhookSecretOut, tags=["webhooks"])
def get_secret(account: Account = Depends(account_writer),
               session: Session = Depends(get_session)) -> WebhookSecretOut:
    """The `whsec_` secret that signs this account's webhooks (Standard Webhooks)."""
    return WebhookSecretOut(secret=webhooks.account_secret(session, account.id))


@router.post("/webhooks/secret/rotate", response_model=WebhookSecretOut, tags=["webhooks"])
def rotate_secret(account: Account = Depends(account_writer),
                  session: Session = Depends(get_session)) -> WebhookSecretOut:
    """A new signing secret; later attempts, retries included, are signed with it."""
    return WebhookSecretOut(secret=webhooks.account_secret(session, account.id, rotate=True))


@router.get("/webhooks/{endpoint_id}", response_model=WebhookEndpointOut, tags=["webhooks"],
            responses=problems(404))
def get_endpoint(endpoint_id: str = EndpointId, account: Account = Depends(account_reader),
                 session: Session = Depends(get_session)) -> WebhookEndpointOut:
    """One webhook endpoint."""
    return _out(_endpoint(session, account, endpoint_id))


@router.patch("/webhooks/{endpoint_id}", response_model=WebhookEndpointOut, tags=["webhooks"],
              responses=problems(404, 413, 422))
def update_endpoint(body: WebhookEndpointPatch, endpoint_id: str = EndpointId,
                    account: Account = Depends(account_writer),
                    session: Session = Depends(get_session)) -> WebhookEndpointOut:
    """Change a webhook endpoint's URL, events, description or whether it is enabled."""
    endpoint = _endpoint(session, account, endpoint_id)
    if body.url is not None:
        webhooks.check_url(str(body.url))
        endpoint.url = str(body.url)
    if body.events is not None:
        endpoint.events = webhooks.normalise_events(body.events) or []
    if body.description is not None:
        endpoint.description = body.description
    if body.enabled is not None:
        endpoint.enabled = body.enabled
    session.flush()
    forget("webhook-endpoints", account.id)
    return _out(endpoint)


@router.delete("/webhooks/{endpoint_id}", status_code=204, tags=["webhooks"], response_class=Response,
               responses=problems(404))
def delete_endpoint(endpoint_id: str = EndpointId, account: Account = Depends(account_writer),
                    session: Session = Depends(get_session)) -> Response:
    """Remove a webhook endpoint; deliveries already made stay listed on their requests."""
    repo.delete_endpoint(session, _endpoint(session, account, endpoint_id))
    forget("webhook-endpoints", account.id)
    return Response(status_code=204)


def _settings_out(session: Session, account: Account) -> AccountSettingsOut:
    lim = account_limits(session, account.id)
    return AccountSettingsOut(id=account.id, name=account.name, rate_per_s=lim.rate_per_s,
                              rate_burst=lim.burst, max_concurrency=lim.max_concurrency,
                              retention_days=lim.retention_days)


@router.get("/account", response_model=AccountSettingsOut, tags=["account"])
def get_account(account: Account = Depends(account_reader),
                session: Session = Depends(get_session)) -> AccountSettingsOut:
    """The account's limits and output retention."""
    return _settings_out(session, account)


@router.patch("/account", response_model=AccountSettingsOut, tags=["account"], responses=problems(413, 422))
def update_account(body: AccountSettingsPatch, account: Account = Depends(account_writer),
                   session: Session = Depends(get_session)) -> AccountSettingsOut:
    """Set how many days output files are kept (0: until deleted)."""
    row = repo.account_settings(session, account.id)
    if row is None:
        row = AccountSettings(account_id=account.id)
        session.add(row)
    if body.retention_days is not None:
        row.retention_days = body.retention_days
    row.updated_at = utcnow()
    session.flush()
    forget("limits", account.id)
    return _settings_out(session, account)


@router.get("/pools/{name}/stats", response_model=PoolStats, tags=["pools"], responses=problems(404, 422))
def pool_stats(name: str = Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$"),
               window_s: int = Query(3600, ge=60, le=31 * 24 * 3600, description="The window, in seconds"),
               account: Account = Depends(account_reader),
               session: Session = Depends(get_session)) -> PoolStats:
    """A pool's p50/p95 queue wait and run time over the window, and its SLA compliance."""
    pool = pools.visible_pool(session, name, account.id)
    return PoolStats.model_validate(pools.stats(session, pool, window_s=window_s))

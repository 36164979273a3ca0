"""Customer and admin authentication, with the per-key rate limit."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from billing.models import Account
from gateway import limits
from gateway import repository as repo
from gateway.cache import cached
from gateway.config import get_gateway_settings
from kit.db import get_session
from kit.errors import Forbidden, Unauthorized
from kit.keys import bearer_token, key_digest
from kit.settings import get_settings

# Reads (polling, events) get this many times the account's write budget.
READ_FACTOR = 10
API_KEY = APIKeyHeader(name="Authorization", scheme_name="CustomerKey", auto_error=False,
                       description="`Key <api key>` or `Bearer <api key>`")
ADMIN_KEY = APIKeyHeader(name="Authorization", scheme_name="AdminKey", auto_error=False,
                         description="`Bearer <admin key>`")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    account_id: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Limits:
    rate_per_s: float
    burst: int
    max_concurrency: int
    retention_days: int


def account_limits(session: Session, account_id: str) -> Limits:
    """The account's limits: its own settings, else the gateway's defaults."""
    def load() -> Limits:
        defaults = get_gateway_settings()
        row = repo.account_settings(session, account_id)

        def pick(name: str) -> object:
            value = getattr(row, name, None) if row is not None else None
            return getattr(defaults, name) if value is None else value

        return Limits(float(pick("rate_per_s")), int(pick("rate_burst")),  # type: ignore[arg-type]
                      int(pick("max_concurrency")), int(pick("retention_days")))  # type: ignore[arg-type]

    return cached("limits", account_id, load)


def _key(session: Session, token: str) -> KeyInfo | None:
    def load() -> KeyInfo | None:
        key = repo.key_by_digest(session, key_digest(token))
        return KeyInfo(key.id, key.account_id, tuple(key.scopes)) if key is not None else None

    return cached("key", key_digest(token), load)


def admit(authorization: str | None, session: Session, scope: str, state: dict) -> tuple[Account, limits.Charge]:
    """The account behind a key with `scope`, and the rate-limit token the call costs."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("an API key is required: Authorization: Key <key>")
    key = _key(session, token)
    if key is None:
        raise Unauthorized("the API key is not valid or was revoked")
    if scope not in key.scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    account = cached("account", key.account_id, lambda: session.get(Account, key.account_id))
    if account is None:  # pragma: no cover - the foreign key makes this impossible
        raise Unauthorized("the API key's account no longer exists")
    lim = account_limits(session, account.id)
    factor = 1 if scope == "requests:write" else READ_FACTOR
    return account, limits.Charge(state, f"{'w' if factor == 1 else 'r'}:{key.id}",
                                  rate_per_s=lim.rate_per_s * factor, burst=lim.burst * factor)


def authenticate(authorization: str | None, state: dict, session: Session, scope: str) -> Account:
    """The account behind a key with `scope`, after taking a token from the key's rate limit."""
    account, charge = admit(authorization, session, scope, state)
    limits.enforce(charge)
    return account


def account_writer(request: Request, authorization: str | None = Security(API_KEY),
                   session: Session = Depends(get_session)) -> Account:
    """The account behind a key with `requests:write`."""
    return authenticate(authorization, request.scope.setdefault("state", {}), session, "requests:write")


def account_reader(request: Request, authorization: str | None = Security(API_KEY),
                   session: Session = Depends(get_session)) -> Account:
    """The account behind a key with `requests:read`."""
    return authenticate(authorization, request.scope.setdefault("state", {}), session, "requests:read")


def admin(authorization: str | None = Security(ADMIN_KEY)) -> None:
    """Platform operators only."""
    token = bearer_token(authorization)
    if token is None or not hmac.compare_digest(token, get_settings().admin_key):
        raise Unauthorized("the admin key is required")

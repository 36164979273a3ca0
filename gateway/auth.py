"""Customer and admin authentication."""

from __future__ import annotations

import hmac

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from billing.models import Account
from gateway import repository as repo
from kit.db import get_session
from kit.errors import Forbidden, Unauthorized
from kit.keys import bearer_token, key_digest
from kit.settings import get_settings


def _account(authorization: str | None, session: Session, scope: str) -> Account:
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("an API key is required: Authorization: Key <key>")
    key = repo.key_by_digest(session, key_digest(token))
    if key is None:
        raise Unauthorized("the API key is not valid or was revoked")
    if scope not in key.scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    account = session.get(Account, key.account_id)
    if account is None:  # pragma: no cover - the foreign key makes this impossible
        raise Unauthorized("the API key's account no longer exists")
    return account


def account_writer(authorization: str | None = Header(default=None),
                   session: Session = Depends(get_session)) -> Account:
    """The account behind a key with `requests:write`."""
    return _account(authorization, session, "requests:write")


def account_reader(authorization: str | None = Header(default=None),
                   session: Session = Depends(get_session)) -> Account:
    """The account behind a key with `requests:read`."""
    return _account(authorization, session, "requests:read")


def admin(authorization: str | None = Header(default=None)) -> None:
    """Platform operators only."""
    token = bearer_token(authorization)
    if token is None or not hmac.compare_digest(token, get_settings().admin_key):
        raise Unauthorized("the admin key is required")

"""The `finance` role: finance API keys (or the operators' admin key), or a signed session.

API clients send `Authorization: Key <key>`; people sign in at /finance/login with the same
key and get a short-lived, HMAC-signed, HttpOnly cookie naming the key (never the key
itself), so revoking the key ends the session too.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from billing.reports import repository as repo
from billing.reports.models import FinanceKey
from kit import signing
from kit.db import get_session
from kit.errors import AppError, Unauthorized
from kit.keys import bearer_token, key_digest, new_key
from kit.settings import get_settings

COOKIE = "mg_finance"
SESSION_TTL_S = 8 * 3600
ADMIN = "admin"


@dataclass(frozen=True)
class FinanceUser:
    """Who is reading the books: a finance key's name, or the operators."""

    key_id: str
    name: str


class SignInRequired(AppError):
    """A finance page was opened without a session: the browser is sent to sign in."""

    status_code, type, title = 303, "sign-in-required", "Sign in required"


def issue_finance_key(session: Session, *, name: str) -> str:
    """A new finance key (shown once; stored as a digest)."""
    key = new_key("mgf")
    session.add(FinanceKey(name=name, digest=key_digest(key)))
    session.flush()
    return key


def check_key(session: Session, key: str) -> FinanceUser | None:
    """The finance user a key belongs to, or None."""
    if hmac.compare_digest(key, get_settings().admin_key):
        return FinanceUser(ADMIN, "operators")
    found = repo.finance_key_by_digest(session, key_digest(key))
    return FinanceUser(found.id, found.name) if found else None


def session_cookie(user: FinanceUser) -> str:
    """The signed cookie value for a signed-in user."""
    expires, signature = signing.sign(f"finance:{user.key_id}", SESSION_TTL_S)
    return f"{user.key_id}.{expires}.{signature}"


def _from_cookie(session: Session, value: str | None) -> FinanceUser | None:
    if not value or value.count(".") < 2:
        return None
    key_id, expires, signature = value.split(".", 2)
    if not expires.isdigit() or not signing.verify(f"finance:{key_id}", int(expires), signature):
        return None
    if key_id == ADMIN:
        return FinanceUser(ADMIN, "operators")
    found = repo.finance_key(session, key_id)
    return FinanceUser(found.id, found.name) if found else None


def _user(request: Request, authorization: str | None, session: Session) -> FinanceUser | None:
    token = bearer_token(authorization)
    if token is not None:
        return check_key(session, token)
    return _from_cookie(session, request.cookies.get(COOKIE))


def finance_api(request: Request, authorization: str | None = Header(default=None),
                session: Session = Depends(get_session)) -> FinanceUser:
    """Dependency for finance JSON/CSV endpoints: 401 without the role."""
    user = _user(request, authorization, session)
    if user is None:
        raise Unauthorized("a finance key is required: Authorization: Key <finance key>")
    return user


def finance_page(request: Request, authorization: str | None = Header(default=None),
                 session: Session = Depends(get_session)) -> FinanceUser:
    """Dependency for finance pages: without the role the browser goes to the sign-in page."""
    user = _user(request, authorization, session)
    if user is None:
        raise SignInRequired("sign in to see the finance pages",
                             headers={"Location": f"/finance/login?next={request.url.path}"})
    return user


def admin_only(authorization: str | None = Header(default=None)) -> None:
    """Operators only (issuing finance keys)."""
    token = bearer_token(authorization)
    if token is None or not hmac.compare_digest(token, get_settings().admin_key):
        raise Unauthorized("the admin key is required")

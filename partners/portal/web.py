"""The portal's plumbing: templates, the route class (security headers, HTML errors), sign-in state.

Pages are server-rendered with Jinja2; htmx (vendored under static/) swaps fragments for live
status and logs. The Content-Security-Policy allows scripts and styles from this origin only,
so templates carry no inline scripts, inline styles or event-handler attributes.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Cookie, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from kit.db import CommitRoute, get_session
from kit.errors import AppError, Forbidden, InvalidInput, Unauthorized
from kit.settings import get_settings
from partners import members
from partners.auth import CSRF_HEADER, SESSION_COOKIE, Actor
from partners.models import PartnerMember, PortalSession

T = TypeVar("T", bound=BaseModel)
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
LOGIN_CSRF_COOKIE = "mg_portal_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _money(micros: int | None, currency: str = "usd") -> str:
    value = (micros or 0) / 1_000_000
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower(), "")
    return f"{symbol}{value:,.4f}" if symbol else f"{value:,.4f} {currency.upper()}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


templates.filters.update(when=_when, size=_size, money=_money, ms=_ms)


def secure_cookies(request: Request) -> bool:
    """Cookies are `Secure` whenever the portal is reached over HTTPS (always in production)."""
    return request.url.scheme == "https" or get_settings().public_url.startswith("https://") \
        or get_settings().env == "production"


def add_security_headers(response: Response) -> Response:
    """CSP and friends on every portal response; pages are never cached (they show live state)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(request: Request, template: str, status_code: int = 200, *, anonymous: bool = False,
           **context: Any) -> HTMLResponse:
    """A page or fragment, with the signed-in member and CSRF token in its context."""
    user: PortalUser | None = None if anonymous else getattr(request.state, "portal_user", None)
    html = templates.get_template(template).render(
        request=request, user=user, csrf=user.csrf if user else None, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status_code)


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    """An HTML error page (the portal never answers with problem+json)."""
    # Anonymous: after a rollback the member's row must not be read again.
    return render(request, "error.html", status_code=status, anonymous=True, title=title, detail=detail,
                  status=status)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def login_redirect(request: Request) -> Response:
    """Send a signed-out browser to the sign-in page, coming back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    url = f"/portal/login?next={quote(target, safe='')}"
    if _is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


class PortalRoute(CommitRoute):
    """Commits like every route, and turns errors into HTML pages with the security headers."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def portal_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except NotSignedIn:
                response = login_redirect(request)
            except AppError as exc:
                response = error_page(request, exc.status_code, exc.title, exc.message)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ())[1:])
                response = error_page(request, 422, "Invalid input", f"{where}: {first.get('msg', 'invalid')}")
            except StarletteHTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail), str(exc.detail))
            return add_security_headers(response)

        return portal_handler


class NotSignedIn(Unauthorized):
    """No live portal session: pages redirect to the sign-in form."""


@dataclass(frozen=True)
class PortalUser:
    """The signed-in member, their organisation and session."""

    member: PartnerMember
    row: PortalSession

    @property
    def partner(self):  # type: ignore[no-untyped-def]
        return self.member.partner

    @property
    def csrf(self) -> str:
        return self.row.csrf_token

    @property
    def actor(self) -> Actor:
        return Actor(partner=self.member.partner, member=self.member, portal_session=self.row)

    def can(self, role: str) -> bool:
        return members.has_role(self.member, role)


async def portal_user(request: Request, mg_portal: str | None = Cookie(default=None),
                      session: Session = Depends(get_session)) -> PortalUser:
    """The signed-in member; state-changing requests must carry the session's CSRF token."""
    row = members.session_for_token(session, mg_portal)
    if row is None:
        raise NotSignedIn("sign in to the portal first")
    user = PortalUser(row.member, row)
    request.state.portal_user = user
    if request.method not in ("GET", "HEAD"):
        supplied = request.headers.get(CSRF_HEADER)
        if supplied is None:
            form = await request.form()
            value = form.get("csrf_token")
            supplied = value if isinstance(value, str) else None
        if not members.csrf_ok(row, supplied):
            raise Forbidden("this form has expired or did not come from the portal; reload the page and try again")
    return user


def role(minimum: str) -> Callable[..., Any]:
    """A dependency: the signed-in member, if their role is `minimum` or above."""

    def dependency(user: PortalUser = Depends(portal_user)) -> PortalUser:
        if not user.can(minimum):
            raise Forbidden(f"this needs the {minimum} role; ask an admin of {user.partner.name}")
        return user

    return dependency


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure over HTTPS, for the whole site (the
    portal's scripts call the partner API with it)."""
    response.set_cookie(SESSION_COOKIE, token, max_age=int(members.SESSION_MAX.total_seconds()),
                        httponly=True, samesite="lax", secure=secure_cookies(request), path="/")


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=secure_cookies(request))


def login_csrf(request: Request, response: Response) -> str:
    """A double-submit token for the sign-in form (there is no session to hold one yet)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=secure_cookies(request), path="/portal")
    return token


def login_csrf_ok(request: Request, supplied: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    return bool(cookie and supplied) and secrets.compare_digest(cookie, supplied or "")


def validated(schema: type[T], **values: Any) -> T:
    """A form's values checked by the API's own schema; problems become a 422 page."""
    try:
        return schema(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}") from None


def safe_next(target: str | None) -> str:
    """Only ever redirect back into the portal (no open redirects)."""
    if target and target.startswith("/portal") and not target.startswith("//") and "\\" not in target:
        return target
    return "/portal"

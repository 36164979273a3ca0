"""Security headers on every answer: a Content-Security-Policy fit for what the path serves,
nosniff, no framing, and HSTS where the settings ask for it.

The portal sets its own stricter policy (scripts from this origin only); this middleware only
fills in what a response lacks. Output files are partner-made content served from this origin,
so they are sandboxed: an HTML or SVG "image" a model returns cannot run script next to the
portal's session cookie.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kit.settings import Settings, get_settings

# JSON answers load nothing and are never framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# Finance pages: no script at all; their styles and matplotlib's SVG charts are inline.
FINANCE_CSP = ("default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
FILE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
# Swagger UI and ReDoc load their scripts from a CDN; they only must not be framed.
DOCS_CSP = "frame-ancestors 'none'"
DOCS = ("/docs", "/redoc")
YEAR_S = 365 * 24 * 3600


def csp_for(path: str) -> str:
    """The default policy for a path."""
    if path == "/finance" or path.startswith("/finance/"):
        return FINANCE_CSP
    if path.startswith("/v1/files/"):
        return FILE_CSP
    if path.startswith(DOCS):
        return DOCS_CSP
    return API_CSP


def hsts_max_age(settings: Settings) -> int:
    """Seconds browsers should keep to HTTPS: the setting, else a year in production only."""
    if settings.hsts_max_age_s is not None:
        return settings.hsts_max_age_s
    return YEAR_S if settings.env == "production" else 0


class SecurityHeaders:
    """ASGI middleware adding the security headers a response has not set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        max_age = hsts_max_age(get_settings())
        self.common = [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                       ("Referrer-Policy", "no-referrer")]
        if max_age > 0:
            self.common.append(("Strict-Transport-Security", f"max-age={max_age}; includeSubDomains"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*self.common, ("Content-Security-Policy", csp_for(scope["path"]))]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)

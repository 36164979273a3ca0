"""The partner portal (`/portal`): server-rendered pages with Jinja2 and htmx.

`router` serves every page; `fallback` answers unknown portal paths with an HTML 404 and is
included last (after pages other domains add, such as billing's earnings page).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from partners.portal import deploy_pages, pages
from partners.portal.web import PortalRoute, add_security_headers, error_page

router = APIRouter(include_in_schema=False)
router.include_router(pages.router)
router.include_router(deploy_pages.router)

fallback = APIRouter(include_in_schema=False, route_class=PortalRoute)


@fallback.api_route("/portal/{rest:path}", methods=["GET", "POST"])
def not_found(request: Request, rest: str) -> HTMLResponse:
    """Any other portal path."""
    return add_security_headers(error_page(request, 404, "Not found", "There is no such page in the portal."))  # type: ignore[return-value]

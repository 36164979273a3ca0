"""Partner authentication: `Authorization: Bearer mgp_…`, or a portal session cookie.

The portal's own scripts (chunked uploads, live status) call the partner API with the
session cookie; then every state-changing call must carry the session's CSRF token in
`X-CSRF-Token`, and a viewer may only read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Cookie, Depends, Header, Request
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import Forbidden, Unauthorized
from kit.keys import bearer_token, key_digest
from partners import members
from partners import repository as repo
from partners.models import Partner, PartnerKey, PartnerMember, PortalSession

SESSION_COOKIE = "mg_portal"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Actor:
    """Who is acting for a partner: an API key (full access) or a signed-in member (by role)."""

    partner: Partner
    member: PartnerMember | None = None
    key: PartnerKey | None = None
    portal_session: PortalSession | None = None

    @property
    def name(self) -> str:
        """How the actor appears in a deployment's history."""
        if self.member is not None:
            return self.member.email
        return f"key:{self.key.name}" if self.key is not None else "partner"

    def can(self, role: str) -> bool:
        """API keys act for the whole organisation; members act within their role."""
        return self.member is None or members.has_role(self.member, role)


def current_actor(
    request: Request,
    authorization: str | None = Header(default=None),
    mg_portal: str | None = Cookie(default=None),
    session: Session = Depends(get_session),
) -> Actor:
    """The API key or portal member behind this request."""
    if authorization is not None:
        token = bearer_token(authorization)
        if token is None or not token.startswith("mgp_"):
            raise Unauthorized("a partner API key is required (Authorization: Bearer mgp_…)")
        key = repo.key_by_digest(session, key_digest(token))
        partner = session.get(Partner, key.partner_id) if key is not None else None
        if key is None or partner is None:
            raise Unauthorized("the partner API key is not valid")
        return Actor(partner=partner, key=key)
    row = members.session_for_token(session, mg_portal)
    if row is None:
        raise Unauthorized("a partner API key is required (Authorization: Bearer mgp_…)")
    actor = Actor(partner=row.member.partner, member=row.member, portal_session=row)
    if request.method not in SAFE_METHODS:
        if not members.csrf_ok(row, request.headers.get(CSRF_HEADER)):
            raise Forbidden(f"the {CSRF_HEADER} header is missing or does not match this session")
        if not actor.can("developer"):
            raise Forbidden("viewers can look but not change anything")
    return actor


def actor_with(role: str) -> Callable[..., Actor]:
    """A dependency: the actor, if their role is `role` or above."""

    def dependency(actor: Actor = Depends(current_actor)) -> Actor:
        if not actor.can(role):
            raise Forbidden(f"this needs the {role} role")
        return actor

    return dependency


def current_partner(actor: Actor = Depends(current_actor)) -> Partner:
    """The partner on whose behalf this request acts."""
    return actor.partner

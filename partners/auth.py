"""Partner authentication for the partner API: `Authorization: Bearer mgp_…`."""

from __future__ import annotations

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import Unauthorized
from kit.keys import bearer_token, key_digest
from partners import repository as repo
from partners.models import Partner


def current_partner(
    authorization: str | None = Header(default=None), session: Session = Depends(get_session)
) -> Partner:
    """The partner whose API key signed this request."""
    token = bearer_token(authorization)
    if token is None or not token.startswith("mgp_"):
        raise Unauthorized("a partner API key is required (Authorization: Bearer mgp_…)")
    partner = repo.partner_by_key_digest(session, key_digest(token))
    if partner is None:
        raise Unauthorized("the partner API key is not valid")
    return partner

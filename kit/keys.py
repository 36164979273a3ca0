"""API keys: high-entropy secrets shown once, stored as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets


def new_key(kind: str) -> str:
    """A new secret such as `mg_live_…` (customer) or `mgp_…` (partner)."""
    return f"{kind}_{secrets.token_urlsafe(32)}"


def key_digest(key: str) -> str:
    """What we store: the key's SHA-256 (keys are random, so no slow hash is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key from `Authorization: Key <k>` or `Authorization: Bearer <k>`."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() not in ("key", "bearer") or not token.strip():
        return None
    return token.strip()

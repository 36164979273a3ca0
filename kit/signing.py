"""Short-lived signed tokens (file URLs) with HMAC-SHA256 over the settings' secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from kit.settings import get_settings


def _mac(message: str) -> str:
    key = get_settings().secret_key.encode()
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:20]).decode().rstrip("=")


def sign(subject: str, ttl_s: int) -> tuple[int, str]:
    """An expiry time and signature that vouch for `subject` until then."""
    expires = int(time.time()) + ttl_s
    return expires, _mac(f"{subject}:{expires}")


def verify(subject: str, expires: int, signature: str) -> bool:
    """True when the signature is ours and has not expired."""
    if expires < time.time():
        return False
    return hmac.compare_digest(_mac(f"{subject}:{expires}"), signature)

"""Prefixed, time-sortable identifiers: `req_01JD…` (48-bit ms time + 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """A new id like `req_01jd2…`: sorts by creation time, unique across processes."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(millis, 10)}{_encode(rand, 16)}"


def has_prefix(value: str, prefix: str) -> bool:
    """True when `value` looks like an id made by `new_id(prefix)`."""
    head, _, tail = value.partition("_")
    return head == prefix and len(tail) == 26 and all(c in _ALPHABET for c in tail)

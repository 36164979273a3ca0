"""A small per-process cache with a time to live, for what every request looks up.

API keys, accounts, models and prices change rarely and are read on every submit; holding
them for `MEDIAGATE_GATEWAY_CACHE_TTL_S` (2 s by default) saves those round trips, at the
cost of a revocation or a new price taking that long to reach every process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.config import get_gateway_settings

T = TypeVar("T")
_MISSING = object()
_entries: dict[tuple[str, str], tuple[float, Any]] = {}
_lock = threading.Lock()
MAX_ENTRIES = 10_000


def cached(kind: str, key: str, load: Callable[[], T]) -> T:
    """`load()`'s value for (kind, key), reused until the TTL passes."""
    ttl = get_gateway_settings().cache_ttl_s
    if ttl <= 0:
        return load()
    now = time.monotonic()
    hit = _entries.get((kind, key), _MISSING)
    if hit is not _MISSING and hit[0] > now:  # type: ignore[index]
        return hit[1]  # type: ignore[index]
    value = load()
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[(kind, key)] = (now + ttl, value)
    return value


def forget(kind: str, key: str | None = None) -> None:
    """Drop one entry, or every entry of a kind (after this process changed it)."""
    with _lock:
        for k in [k for k in _entries if k[0] == kind and (key is None or k[1] == key)]:
            _entries.pop(k, None)

"""Per-key rate limits shared by every API process through Redis, and request body limits.

The limiter is a token bucket kept in one Redis hash per key and updated by a Lua script,
so concurrent API processes see one budget and the clock is Redis's own. Answers carry the
IETF draft `RateLimit-*` headers; a refusal is 429 with `Retry-After`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.config import get_gateway_settings
from kit.errors import PROBLEM_BASE, RateLimited
from kit.settings import get_settings

log = logging.getLogger(__name__)

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, cost. Returns {allowed, tokens, retry_ms}.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, tostring(tokens), retry}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int
    window_s: int

    def headers(self) -> dict[str, str]:
        """The `RateLimit-*` headers (and `Retry-After` when refused)."""
        out = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
               "RateLimit-Reset": str(self.reset_s), "RateLimit-Policy": f"{self.limit};w={self.window_s}"}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


# The limiter sits on every request's path: a Redis that is slow or cut off lets requests
# through after this long instead of holding them (see `take`).
REDIS_TIMEOUT_S = 2


@functools.cache
def _script():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                  socket_connect_timeout=REDIS_TIMEOUT_S)
    return client.register_script(_BUCKET)


# After a failure, Redis is left alone this long: requests pass at once rather than each
# waiting on a dead connection, and the log gets one warning, not one per request.
PAUSE_AFTER_FAILURE_S = 2.0
_paused_until = 0.0


@dataclass(frozen=True)
class Charge:
    """One token to take from a key's bucket; the answer's headers go into `state`."""

    state: dict
    bucket: str
    rate_per_s: float
    burst: int


def take(charge: Charge) -> Verdict | None:
    """Take the charge's token; None when there is no limit to apply (no Redis configured,
    or Redis away)."""
    return take_many([charge])[0]


def take_many(charges: list[Charge]) -> list[Verdict | None]:
    """Take each charge's token, in one round trip for all of them."""
    global _paused_until
    if not charges or not get_settings().redis_url or time.monotonic() < _paused_until:
        return [None] * len(charges)
    script = _script()
    try:
        # One charge goes as a plain EVALSHA; more share a pipeline (still one round trip).
        pipe = script.registered_client.pipeline(transaction=False) if len(charges) > 1 else None
        replies = [script(keys=[f"mediagate:rl:{c.bucket}"], args=[c.rate_per_s, c.burst, 1], client=pipe)
                   for c in charges]
        if pipe is not None:
            replies = pipe.execute()
    except Exception:  # noqa: BLE001 - a Redis outage must not take the API down with it
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
        log.warning("rate limiter unavailable; letting requests through for %g s", PAUSE_AFTER_FAILURE_S,
                    exc_info=True)
        return [None] * len(charges)
    return [_verdict(c, *reply) for c, reply in zip(charges, replies, strict=True)]


def _verdict(c: Charge, allowed: int, tokens: bytes | str, retry_ms: int) -> Verdict:
    left = float(tokens)
    return Verdict(allowed=bool(allowed), limit=c.burst, remaining=max(0, math.floor(left)),
                   reset_s=math.ceil(max(0.0, c.burst - left) / c.rate_per_s),
                   retry_after_s=max(1, math.ceil(int(retry_ms) / 1000)),
                   window_s=max(1, math.ceil(c.burst / c.rate_per_s)))


def settle(charge: Charge, verdict: Verdict | None) -> None:
    """Put the verdict's headers on the answer (see `CustomerEdges`); 429 when refused."""
    if verdict is None:
        return
    charge.state["ratelimit_headers"] = verdict.headers()
    if not verdict.allowed:
        raise RateLimited(f"rate limit of {charge.burst} requests (refilling {charge.rate_per_s:g}/s) reached; "
                          f"retry in {verdict.retry_after_s} s", headers=verdict.headers())


def enforce(charge: Charge) -> None:
    """Take the charge's token or raise 429."""
    settle(charge, take(charge))


# Customer API paths whose bodies are small JSON; partner uploads have limits of their own.
LIMITED_PREFIXES = ("/v1/models/", "/v1/requests/", "/v1/webhooks", "/v1/account")


class CustomerEdges:
    """ASGI middleware: 413 for oversized customer bodies; `RateLimit-*` headers on answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        limit = get_gateway_settings().max_body_bytes
        if scope["path"].startswith(LIMITED_PREFIXES) and scope["method"] in ("POST", "PUT", "PATCH"):
            length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if length is not None and length.isdigit() and int(length) > limit:
                await _too_large(scope, send, limit)
                return
            receive = _counting(receive, limit)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = state.get("ratelimit_headers")
                if extra:
                    present = {k.lower() for k, _ in message.get("headers", [])}
                    message["headers"] = list(message.get("headers", [])) + [
                        (k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower().encode() not in present
                    ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                from starlette.exceptions import HTTPException

                raise HTTPException(413, f"the request body is over the {limit}-byte limit")
        return message

    return wrapped


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    import json

    body = json.dumps({"type": PROBLEM_BASE + "payload-too-large", "title": "Payload too large",
                       "status": 413, "detail": f"the request body is over the {limit}-byte limit",
                       "instance": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

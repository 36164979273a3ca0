"""Text never carries NUL: PostgreSQL cannot store it, so a `\\u0000` in a JSON string, a `%00`
in a query, path or form would otherwise end as a 500 from the first query that meets it.

Refused at the edge with a 422 problem, for every route at once. JSON and form bodies are
checked as they stream in (nothing is buffered); binary bodies such as package uploads pass
untouched.
"""

from __future__ import annotations

import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kit.errors import PROBLEM_BASE

DETAIL = "text may not contain NUL characters (\\u0000 or %00)"
# An escaped NUL: `\u0000` after an odd number of backslashes (`\\u0000` is a backslash, then text).
JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
FORM_NUL = re.compile(rb"%00")
TAIL = 16  # bytes kept from the previous chunk, so a match across chunks is seen


def _pattern(scope: Scope) -> re.Pattern[bytes] | None:
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"").split(b";")[0].strip().lower()
    if content_type == b"application/json" or content_type.endswith(b"+json"):
        return JSON_NUL
    if content_type == b"application/x-www-form-urlencoded":
        return FORM_NUL
    return None


def _scanning(receive: Receive, pattern: re.Pattern[bytes]) -> Receive:
    tail = b""

    async def wrapped() -> Message:
        nonlocal tail
        message = await receive()
        if message["type"] == "http.request":
            window = tail + message.get("body", b"")
            if pattern.search(window):
                raise HTTPException(422, DETAIL)
            tail = window[-TAIL:]
        return message

    return wrapped


class RejectNul:
    """ASGI middleware: 422 for NUL in the path, the query or a JSON or form body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or FORM_NUL.search(scope.get("query_string", b"")):
            await _refuse(scope, send)
            return
        pattern = _pattern(scope)
        await self.app(scope, _scanning(receive, pattern) if pattern else receive, send)


async def _refuse(scope: Scope, send: Send) -> None:
    body = json.dumps({"type": PROBLEM_BASE + "invalid-request", "title": "Invalid request", "status": 422,
                       "detail": DETAIL, "instance": scope["path"].replace("\x00", "")}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

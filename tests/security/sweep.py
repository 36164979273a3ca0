"""The route sweep: call every route of an app with no credential and with each kind of
credential, and report every answer that does not match the route's classification."""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response

from tests.security.route_table import ACCEPTS, ROUTES

API_KINDS = {"customer:read", "customer:write", "partner:read", "partner:write", "partner:admin",
             "finance:api", "admin"}
PAGE_KINDS = {"portal": "/portal/login", "portal:developer": "/portal/login", "portal:admin": "/portal/login",
              "finance:page": "/finance/login"}
SAFE = {"GET", "HEAD", "OPTIONS"}
# Path parameters that have a format get a value of that format, so the route is reached.
PARAMS = {"file_id": "fil_0sweep", "request_id": "req_0sweep", "name": "nothing", "fmt": "csv",
          "period": "2020-01", "rest": "nothing/here"}
# Called with a valid credential, these would end the very session the sweep signs in with.
ENDS_SESSION = {"POST /portal/logout"}
# Routes that read their body before they check the key get a well-formed one, so the answer
# is about the credential (a malformed body is a 422 there even for anonymous callers).
BODIES: dict[str, dict] = {"POST /v1/models/{owner}/{model}/requests": {"input": {}}}


def routes(app: FastAPI) -> Iterator[tuple[str, object]]:
    """`METHOD /path` of every route, in matching order (a path served twice counts once)."""
    seen: set[str] = set()
    for context in iter_route_contexts(app.routes):
        methods = set(context.methods or ())
        if not isinstance(context.original_route, APIRoute) and "GET" in methods:
            methods.discard("HEAD")  # Starlette adds HEAD to every GET route of its own
        for method in sorted(methods):
            label = f"{method} {context.path}"
            if label not in seen:
                seen.add(label)
                yield label, context


def concrete(path: str) -> str:
    """The path with a plausible value in every parameter."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS.get(m.group(1), f"{m.group(1)}-0sweep"), path)


def _to_login(response: Response, login: str) -> bool:
    return response.status_code == 303 and response.headers.get("location", "").startswith(login)


def _verdict(kind: str, method: str, credential: str | None, response: Response) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    accepted = credential is not None and kind in ACCEPTS[credential]
    if credential == "owner-session-without-csrf" and method not in SAFE:
        accepted = False
    if kind == "public":
        if status >= 500:
            return f"a public route answered {status}"
        return None
    if kind == "signed-url":
        return None if status in (404, 422) else f"answered {status} without a valid signature"
    if kind == "stripe-signature":
        return None if status == 400 else f"answered {status} without a Stripe signature"
    if kind == "invite-token":
        return None if 400 <= status < 500 and status not in (401, 403) else f"answered {status} to a made-up invitation"
    if kind in API_KINDS:
        if credential is None:
            return None if status == 401 else f"answered {status} with no credential (expected 401)"
        if accepted:
            return f"refused an accepted credential with {status}" if status in (401, 403) else None
        return None if status in (401, 403) else f"answered {status} to the wrong credential (expected 401/403)"
    if kind in PAGE_KINDS:
        login = PAGE_KINDS[kind]
        if credential is None:
            return None if _to_login(response, login) else f"answered {status} with no session (expected a redirect to {login})"
        if accepted:
            refused = status in (401, 403) or _to_login(response, login)
            return f"refused an accepted credential with {status}" if refused else None
        refused = status == 403 or _to_login(response, login)
        return None if refused else f"answered {status} to the wrong credential (expected sign-in or 403)"
    return f"unknown kind {kind!r}"


def sweep(client: TestClient, app: FastAPI, credentials: dict[str, dict[str, str]],
          table: dict[str, str] = ROUTES, only: set[str] | None = None) -> list[str]:
    """Every way a route of `app` disagrees with `table` when called with `credentials`
    (every route is checked for a classification; `only` limits which are called)."""
    problems: list[str] = []
    labels = dict(routes(app))
    problems += [f"{label}: not classified in tests/security/route_table.py" for label in labels
                 if label not in table]
    problems += [f"{label}: classified but the app has no such route" for label in table if label not in labels]
    for label in labels:
        kind = table.get(label)
        if kind is None or (only is not None and label not in only):
            continue
        method, path = label.split(" ", 1)
        url = concrete(path)
        for name, headers in [(None, {}), *credentials.items()]:
            if label in ENDS_SESSION and name is not None and kind in ACCEPTS.get(name, ()):
                continue
            client.cookies.clear()
            response = client.request(method, url, headers=headers, json=BODIES.get(label), follow_redirects=False)
            wrong = _verdict(kind, method, name, response)
            if wrong:
                problems.append(f"{label} [{kind}] as {name or 'anonymous'}: {wrong}")
    return problems

"""Every route needs the right credential: customer key, partner key or portal session,
finance role, admin key; nothing only for health, documents and sign-in forms.

The sweep also runs on apps built to be wrong (a route stripped of its auth dependency, a
route nobody classified) to show that it notices.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import Account
from billing.reports.auth import ADMIN, FinanceUser, admin_only, finance_api, finance_page
from gateway.auth import account_reader, account_writer, admin
from kit.db import get_session
from partners.auth import Actor, current_actor, current_partner
from partners.models import Partner
from partners.portal.web import portal_user
from tests.security.conftest import admin_headers, finance_key, onboard_partner, open_account
from tests.security.route_table import ROUTES
from tests.security.sweep import routes, sweep

AUTH_DEPENDENCIES = {account_reader, account_writer, admin, current_actor, current_partner, portal_user,
                     finance_api, finance_page, admin_only}


@pytest.fixture(scope="module")
def credentials(app_client: TestClient) -> dict[str, dict[str, str]]:
    org = onboard_partner(app_client, "sweep")
    customer = open_account(app_client, "Sweep customer")
    assert org.owner and org.viewer
    return {
        "customer": customer.key,
        "customer-read-only": customer.read_only,
        "partner-key": org.key,
        "owner-session": org.owner.headers(),
        "owner-session-without-csrf": org.owner.headers(csrf=False),
        "viewer-session": org.viewer.headers(),
        "finance-key": finance_key(app_client),
        "admin-key": admin_headers(),
    }


@pytest.mark.timeout(120)
def test_every_route_needs_the_credential_of_its_kind(app_client: TestClient,
                                                       credentials: dict[str, dict[str, str]]) -> None:
    problems = sweep(app_client, app_client.app, credentials)  # type: ignore[arg-type]
    assert problems == [], "\n".join(problems)


def test_only_the_allow_list_is_public() -> None:
    public = sorted(label for label, kind in ROUTES.items() if kind == "public")
    paths = {label.split(" ", 1)[1] for label in public}
    assert paths <= {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                     "/portal/static/{name}", "/portal/login", "/finance/login", "/finance/logout",
                     "/portal/{rest:path}"}, public


# -- the sweep catches mistakes ---------------------------------------------------------------

def _is_auth(dependency: Any) -> bool:
    call = getattr(dependency, "dependency", None)
    # actor_with(role) and role(minimum) build their dependencies in closures.
    return call in AUTH_DEPENDENCIES or getattr(call, "__qualname__", "").startswith(("actor_with.", "role."))


def _first(model: type) -> Callable[..., Any]:
    def stand_in(session: Session = Depends(get_session)) -> Any:
        return session.scalars(select(model)).first()

    return stand_in


STAND_INS: dict[Any, Callable[..., Any]] = {
    account_reader: _first(Account), account_writer: _first(Account), current_partner: _first(Partner),
    current_actor: lambda partner=Depends(_first(Partner)): Actor(partner=partner),
    finance_page: lambda: FinanceUser(ADMIN, "operators"), finance_api: lambda: FinanceUser(ADMIN, "operators"),
}


def without_auth(app: FastAPI, label: str) -> FastAPI:
    """`app` with the route `label` served by its own handler minus its auth dependencies, as
    if someone had deleted the `Depends(...)` that guarded it."""
    context = dict(routes(app))[label]
    original: APIRoute = context.original_route  # type: ignore[assignment]
    handler = original.endpoint
    hints = typing.get_type_hints(handler, include_extras=True)
    params = []
    for p in inspect.signature(handler).parameters.values():
        p = p.replace(annotation=hints.get(p.name, p.annotation))
        if isinstance(p.default, DependsParam) and _is_auth(p.default):
            p = p.replace(default=Depends(STAND_INS[p.default.dependency]), annotation=Any)
        params.append(p)

    if inspect.iscoroutinefunction(handler):
        @functools.wraps(handler)
        async def endpoint(*args: Any, **kwargs: Any) -> Any:
            return await handler(*args, **kwargs)
    else:
        @functools.wraps(handler)
        def endpoint(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, **kwargs)

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    method, path = label.split(" ", 1)
    app.router.add_api_route(path, endpoint, methods=[method], response_model=original.response_model,
                             status_code=original.status_code, response_class=original.response_class,
                             dependencies=[d for d in context.dependencies if not _is_auth(d)])
    app.router.routes.insert(0, app.router.routes.pop())  # matched before the guarded original
    return app


@pytest.mark.parametrize("label", ["GET /v1/usage", "GET /v1/partner/deployments", "GET /v1/admin/pools",
                                   "GET /finance/periods"])
def test_the_sweep_reports_a_route_that_lost_its_auth_dependency(
        app_client: TestClient, credentials: dict[str, dict[str, str]], label: str) -> None:
    from gateway.app import create_app

    app = without_auth(create_app(check_schema=False), label)
    with TestClient(app) as client:
        leaked = client.request(*label.split(" ", 1))
        assert leaked.status_code == 200, leaked.text  # the stripped route really answers anyone
        problems = sweep(client, app, credentials, only={label})
    assert problems, f"the sweep did not notice that {label} lost its auth"
    assert all(p.startswith(label) for p in problems), problems
    assert any("as anonymous" in p for p in problems), problems


def test_the_sweep_reports_a_route_nobody_classified(credentials: dict[str, dict[str, str]]) -> None:
    from gateway.app import create_app

    app = create_app(check_schema=False)

    @app.get("/v1/debug/state")
    def debug_state() -> dict[str, str]:
        return {"everything": "here"}

    with TestClient(app) as client:
        problems = sweep(client, app, credentials, only=set())
    assert problems == ["GET /v1/debug/state: not classified in tests/security/route_table.py"]

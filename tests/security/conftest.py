"""Security sweep fixtures: the app in-process, and partners, customers and operators made
through the API, each holding every kind of credential the gateway knows."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from kit.settings import get_settings
from tests.conftest import truncate_all
from tests.support import FIXTURE_MODELS, package_bytes

PASSWORD = "correct horse battery staple"
FLAKY_PRICING = {"tier": "revenue_share", "unit": "images", "unit_price_micros": 40_000,
                 "licensor": "bfl", "royalty_bps": 2_500}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {get_settings().admin_key}"}


@pytest.fixture(scope="module")
def app_client(engine: Engine) -> Iterator[TestClient]:
    """The whole app in-process for one module; the tables are emptied afterwards."""
    from gateway.app import create_app

    with TestClient(create_app()) as client:
        yield client
    truncate_all(engine)


@pytest.fixture(scope="module")
def stripe_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Stripe's stand-in (localstripe and the Connect fake), with the SDK pointed at it: nothing
    a test does reaches the real Stripe."""
    from billing.settings import get_billing_settings
    from billing.stripe_gateway import get_gateway
    from tests.fakes.stripe_connect.processes import StripeProcesses

    fakes = StripeProcesses(tmp_path_factory.mktemp("stripe"))
    saved = os.environ.get("MEDIAGATE_STRIPE_API_BASE")
    os.environ["MEDIAGATE_STRIPE_API_BASE"] = fakes.api_base
    get_billing_settings.cache_clear()
    get_gateway.cache_clear()
    try:
        yield fakes
    finally:
        fakes.stop()
        if saved is None:
            os.environ.pop("MEDIAGATE_STRIPE_API_BASE", None)
        else:
            os.environ["MEDIAGATE_STRIPE_API_BASE"] = saved
        get_billing_settings.cache_clear()
        get_gateway.cache_clear()


@pytest.fixture(scope="session")
def flaky_package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return package_bytes(FIXTURE_MODELS / "flaky", tmp_path_factory.mktemp("pkg"))


@dataclass
class PortalSession:
    """A signed-in portal member: the cookie value and the session's CSRF token."""

    token: str
    csrf: str

    def headers(self, *, csrf: bool = True) -> dict[str, str]:
        out = {"Cookie": f"mg_portal={self.token}"}
        if csrf:
            out["X-CSRF-Token"] = self.csrf
        return out


def sign_in(app: TestClient, email: str, password: str = PASSWORD) -> PortalSession:
    """Sign in through the portal's form, in a client of its own (so no cookie leaks into `app`)."""
    with TestClient(app.app) as browser:
        page = browser.get("/portal/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = browser.post("/portal/login", data={"email": email, "password": password, "csrf_token": token,
                                                "next": "/portal"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        home = browser.get("/portal")
        assert home.status_code == 200, home.text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
        return PortalSession(browser.cookies["mg_portal"], csrf)


@dataclass
class PartnerOrg:
    """A partner with a model, a version, a deployment, an upload, members and a second key."""

    slug: str
    model: str
    key: dict[str, str]
    version_id: str = ""
    deployment_id: str = ""
    upload_id: str = ""
    key_id: str = ""
    members: dict[str, str] = field(default_factory=dict)
    owner: PortalSession | None = None
    viewer: PortalSession | None = None


def onboard_partner(app: TestClient, slug: str, package: bytes | None = None) -> PartnerOrg:
    """A partner set up as a lab would do it: admin onboarding, then the partner API (with a
    package: a version, a price card and a deployment too)."""
    r = app.post("/v1/admin/partners", json={"slug": slug, "name": f"{slug.title()} Labs"}, headers=admin_headers())
    assert r.status_code == 201, r.text
    org = PartnerOrg(slug=slug, model=f"{slug}-model", key={"Authorization": f"Bearer {r.json()['api_key']}"})
    r = app.post("/v1/partner/models", json={"slug": org.model, "title": f"{slug} private title"}, headers=org.key)
    assert r.status_code == 201, r.text
    if package is not None:
        r = app.post(f"/v1/partner/models/{org.model}/versions", content=package,
                     headers={**org.key, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        org.version_id = r.json()["id"]
        r = app.put(f"/v1/partner/models/{org.model}/pricing", json=FLAKY_PRICING, headers=org.key)
        assert r.status_code == 200, r.text
        r = app.post("/v1/partner/deployments", json={"model": org.model, "max_replicas": 1}, headers=org.key)
        assert r.status_code == 201, r.text
        org.deployment_id = r.json()["id"]
    r = app.post("/v1/partner/uploads", json={"model": org.model, "size": 10}, headers=org.key)
    assert r.status_code == 201, r.text
    org.upload_id = r.json()["id"]
    r = app.post("/v1/partner/keys", json={"name": "ci"}, headers=org.key)
    assert r.status_code == 201, r.text
    org.key_id = r.json()["id"]
    for role in ("owner", "viewer"):
        email = f"{role}@{slug}.example"
        r = app.post("/v1/partner/members", json={"email": email, "name": role.title(), "role": role,
                                                   "password": PASSWORD}, headers=org.key)
        assert r.status_code == 201, r.text
        org.members[role] = r.json()["id"]
    org.owner = sign_in(app, f"owner@{slug}.example")
    org.viewer = sign_in(app, f"viewer@{slug}.example")
    return org


@dataclass
class CustomerAccount:
    """A customer account with a full key and a read-only key."""

    id: str
    key: dict[str, str]
    read_only: dict[str, str]


def open_account(app: TestClient, name: str) -> CustomerAccount:
    """An account through the admin API, plus a key limited to `requests:read`."""
    from billing.models import Account
    from gateway.service import issue_key
    from kit.db import session_scope

    r = app.post("/v1/admin/accounts", json={"name": name}, headers=admin_headers())
    assert r.status_code == 201, r.text
    body = r.json()
    with session_scope() as session:
        account = session.get(Account, body["id"])
        assert account is not None
        read_key = issue_key(session, account, name="read-only", scopes=["requests:read"])
    return CustomerAccount(body["id"], {"Authorization": f"Key {body['api_key']}"},
                           {"Authorization": f"Key {read_key}"})


def finance_key(app: TestClient) -> dict[str, str]:
    r = app.post("/finance/api/keys", json={"name": "books"}, headers=admin_headers())
    assert r.status_code == 201, r.text
    return {"Authorization": f"Key {r.json()['key']}"}

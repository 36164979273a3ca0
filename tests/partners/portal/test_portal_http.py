"""The portal over HTTP: sign-in, sessions, CSRF, cookie flags, CSP, roles, HTML errors,
isolation between partners, and earnings through billing."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.partners.portal.conftest import ADMIN, PASSWORD, form_token, onboard, sign_in


def test_sign_in_sets_a_locked_down_session_cookie_and_pages_carry_security_headers(api: TestClient) -> None:
    onboard(api, "acme", email="ada@acme.test")
    r = api.get("/portal", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/portal/login?next=%2Fportal"
    page = api.get("/portal/login")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    token = form_token(page.text)

    # A forged form (no or wrong CSRF token) is refused before the password is even looked at.
    r = api.post("/portal/login", data={"email": "ada@acme.test", "password": PASSWORD, "csrf_token": "x"},
                 follow_redirects=False)
    assert r.status_code == 403 and "mg_portal=" not in r.headers.get("set-cookie", "")
    r = api.post("/portal/login", data={"email": "ada@acme.test", "password": "wrong password!",
                                        "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 401 and "do not match" in r.text
    r = api.post("/portal/login", data={"email": "nobody@acme.test", "password": PASSWORD, "csrf_token": token},
                 follow_redirects=False)
    assert r.status_code == 401 and "do not match" in r.text  # same answer for unknown emails

    r = api.post("/portal/login", data={"email": "ADA@acme.test", "password": PASSWORD, "csrf_token": token,
                                        "next": "https://evil.test/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/portal"  # no open redirect
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("mg_portal="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http in this test; see the https test below
    home = api.get("/portal")
    assert home.status_code == 200 and "Acme Labs" in home.text
    assert home.headers["cache-control"] == "no-store"
    assert "<script>" not in home.text and " style=" not in home.text and "onclick" not in home.text

    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)
    r = api.post("/portal/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert api.get("/portal", follow_redirects=False).status_code == 303
    # htmx polls get a redirect header instead of a page.
    r = api.get("/portal/deployments/rows", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/portal/login")


def test_session_cookie_is_secure_over_https(committed) -> None:  # type: ignore[no-untyped-def]
    from gateway.app import create_app

    with TestClient(create_app(), base_url="https://testserver") as client:
        onboard(client, "acme", email="ada@acme.test")
        page = client.get("/portal/login")
        r = client.post("/portal/login", data={"email": "ada@acme.test", "password": PASSWORD,
                                               "csrf_token": form_token(page.text)}, follow_redirects=False)
        cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("mg_portal="))
        assert "Secure" in cookie and "HttpOnly" in cookie


def test_forms_and_portal_api_calls_need_the_csrf_token_and_the_role(api: TestClient) -> None:
    key = onboard(api, "acme", email="ada@acme.test")
    csrf = sign_in(api, "ada@acme.test")
    r = api.post("/portal/models", data={"slug": "art"}, follow_redirects=False)
    assert r.status_code == 403 and "text/html" in r.headers["content-type"] and "expired" in r.text
    r = api.post("/portal/models", data={"slug": "art", "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/portal/models/art?notice=model"
    # A form error is an HTML page too, with the schema's message.
    r = api.post("/portal/models", data={"slug": "Bad Slug!", "csrf_token": csrf})
    assert r.status_code == 422 and "slug" in r.text and "text/html" in r.headers["content-type"]

    # The portal's scripts use the partner API with the cookie: the header token is required.
    r = api.post("/v1/partner/uploads", json={"model": "art"})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    r = api.post("/v1/partner/uploads", json={"model": "art"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    assert api.get("/v1/partner/models").status_code == 200  # reading needs no token

    # A viewer reads but cannot change anything, in the portal or through the API.
    api.post("/v1/partner/members", json={"email": "val@acme.test", "role": "viewer", "password": PASSWORD},
             headers=key)
    api.cookies.clear()
    csrf = sign_in(api, "val@acme.test")
    assert api.get("/portal/models/art").status_code == 200
    r = api.post("/portal/models", data={"slug": "x", "csrf_token": csrf})
    assert r.status_code == 403 and "developer role" in r.text
    r = api.post("/v1/partner/uploads", json={"model": "art"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403
    assert api.get("/portal/keys").status_code == 403
    assert api.get("/v1/partner/keys").status_code == 403


def test_repeated_wrong_passwords_lock_the_member_out_for_a_while(api: TestClient) -> None:
    onboard(api, "acme", email="ada@acme.test")
    token = form_token(api.get("/portal/login").text)
    for _ in range(5):
        r = api.post("/portal/login", data={"email": "ada@acme.test", "password": "not the password",
                                            "csrf_token": token})
        assert r.status_code == 401
    r = api.post("/portal/login", data={"email": "ada@acme.test", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and "try again" in r.text


def test_invitation_sets_a_password_once_and_removal_ends_sessions(api: TestClient) -> None:
    key = onboard(api, "acme", email="ada@acme.test")
    r = api.post("/v1/partner/members", json={"email": "bob@acme.test", "role": "developer"}, headers=key)
    path = "/portal/invite/" + r.json()["invite_url"].rsplit("/", 1)[1]
    bob_id = r.json()["id"]
    page = api.get(path)
    assert page.status_code == 200 and "bob@acme.test" in page.text
    r = api.post(path, data={"password": "short", "csrf_token": form_token(page.text)})
    assert r.status_code == 422 and "12 characters" in r.text
    r = api.post(path, data={"password": "a long enough password", "csrf_token": form_token(page.text)},
                 follow_redirects=False)
    assert r.status_code == 303
    assert "Bob" in api.get("/portal").text or "bob@acme.test" in api.get("/portal").text
    assert api.get(path).status_code == 404  # single use

    api.delete(f"/v1/partner/members/{bob_id}", headers=key)
    assert api.get("/portal", follow_redirects=False).status_code == 303  # his session ended


def test_error_pages_are_html_and_partners_cannot_see_each_other_in_the_portal(api: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support import ROOT, package_bytes

    a = onboard(api, "acme", email="ada@acme.test")
    onboard(api, "bravo", email="bea@bravo.test")
    api.post("/v1/partner/models", json={"slug": "art"}, headers=a)
    api.post("/v1/partner/models/art/versions", content=package_bytes(ROOT / "examples" / "procedural-art", tmp_path),
             headers={**a, "Content-Type": "application/octet-stream"})
    dep = api.post("/v1/partner/deployments", json={"model": "art"}, headers=a).json()
    member = api.get("/v1/partner/members", headers=a).json()[0]
    key_id = api.get("/v1/partner/keys", headers=a).json()[0]["id"]

    csrf = sign_in(api, "bea@bravo.test")
    for path in ("/portal/models/art", f"/portal/deployments/{dep['id']}", f"/portal/deployments/{dep['id']}/status",
                 f"/portal/deployments/{dep['id']}/logs", "/portal/requests/req_nope", "/portal/no/such/page"):
        r = api.get(path)
        assert r.status_code == 404, path
        assert "text/html" in r.headers["content-type"] and "content-security-policy" in r.headers
        assert "acme" not in r.text.lower()
    for path in (f"/portal/deployments/{dep['id']}/rollback", f"/portal/deployments/{dep['id']}/stop",
                 f"/portal/members/{member['id']}/remove", f"/portal/keys/{key_id}/revoke"):
        assert api.post(path, data={"csrf_token": csrf}).status_code == 404, path
    assert api.post(f"/portal/deployments/{dep['id']}/rollout", data={"version": 1, "csrf_token": csrf}).status_code == 404
    assert api.post("/portal/models/art/deploy", data={"version": 1, "csrf_token": csrf}).status_code == 404
    for path in ("/portal", "/portal/models", "/portal/deployments", "/portal/usage", "/portal/earnings",
                 "/portal/members"):
        r = api.get(path)
        assert r.status_code == 200 and "acme" not in r.text.lower(), path
    assert api.get(f"/v1/partner/deployments/{dep['id']}").status_code == 404


def test_earnings_come_from_billing_and_only_ones_own(api: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from billing import service as billing
    from kit.db import session_scope, utcnow
    from partners.models import Model
    from tests.support import ROOT, package_bytes

    a = onboard(api, "acme", email="ada@acme.test")
    b = onboard(api, "bravo")
    api.post("/v1/partner/models", json={"slug": "art"}, headers=a)
    version = api.post("/v1/partner/models/art/versions",
                       content=package_bytes(ROOT / "examples" / "procedural-art", tmp_path),
                       headers={**a, "Content-Type": "application/octet-stream"}).json()
    r = api.put("/v1/partner/models/art/pricing", json={"tier": "partner_priced", "unit": "megapixels",
                                                        "unit_price_micros": 30_000, "platform_fee_bps": 2_000},
                headers=a)
    assert r.status_code == 200, r.text
    account = api.post("/v1/admin/accounts", json={"name": "C"}, headers=ADMIN).json()["id"]
    with session_scope() as s:
        model = s.query(Model).filter_by(slug="art").one()
        for i in range(3):
            billing.record_usage(s, request_id=f"req_test{i}", account_id=account, model=model,
                                 version_id=version["id"], units={"megapixels": 1.0}, occurred_at=utcnow())

    body = api.get("/v1/partner/earnings", headers=a).json()
    assert [(r["model"], r["requests"], r["gross_micros"], r["partner_micros"]) for r in body["rows"]] == [
        ("art", 3, 90_000, 72_000)]
    assert body["totals"]["usd"]["platform_micros"] == 18_000
    assert api.get("/v1/partner/earnings", headers=b).json()["rows"] == []
    assert api.get("/v1/partner/earnings", params={"period": "2026-13"}, headers=a).status_code == 422

    sign_in(api, "ada@acme.test")
    page = api.get("/portal/earnings")
    assert page.status_code == 200 and "$0.0720" in page.text and "acme/art" in page.text


def test_closed_periods_show_as_statements_on_the_earnings_page(api: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from billing import service as billing
    from billing.close.service import close_period
    from kit.db import session_scope
    from partners.models import Model
    from tests.support import ROOT, package_bytes

    a = onboard(api, "acme", email="ada@acme.test")
    api.post("/v1/partner/models", json={"slug": "art"}, headers=a)
    version = api.post("/v1/partner/models/art/versions",
                       content=package_bytes(ROOT / "examples" / "procedural-art", tmp_path),
                       headers={**a, "Content-Type": "application/octet-stream"}).json()
    api.put("/v1/partner/models/art/pricing", json={"tier": "partner_priced", "unit": "megapixels",
                                                    "unit_price_micros": 30_000, "platform_fee_bps": 2_000},
            headers=a)
    account = api.post("/v1/admin/accounts", json={"name": "C"}, headers=ADMIN).json()["id"]
    when = dt.datetime(2026, 10, 15, tzinfo=dt.UTC)
    with session_scope() as s:
        model = s.query(Model).filter_by(slug="art").one()
        billing.set_pricing(s, model, tier="partner_priced", unit="megapixels", unit_price_micros=30_000,
                            platform_fee_bps=2_000, effective_from=when - dt.timedelta(days=1))
        billing.record_usage(s, request_id="req_oct", account_id=account, model=model,
                             version_id=version["id"], units={"megapixels": 2}, occurred_at=when)
    with session_scope() as s:
        close_period(s, "2026-10", now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))

    (statement,) = api.get("/v1/partner/statements", headers=a).json()
    assert statement["period"] == "2026-10" and statement["net_micros"] == 48_000
    sign_in(api, "ada@acme.test")
    page = api.get("/portal/earnings")
    assert page.status_code == 200 and 'id="statements"' in page.text and "2026-10" in page.text
    assert "$0.0480" in page.text

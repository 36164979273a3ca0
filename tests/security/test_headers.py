"""Security headers: CSP on the portal and finance pages (and a locked-down one on the API and
on output files), nosniff, no framing, HSTS as the settings say, and no server banner from the
real `mediagate serve` process."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.headers import YEAR_S, hsts_max_age
from kit.settings import Settings, get_settings
from tests.e2e.api_support import free_port
from tests.security.conftest import admin_headers, onboard_partner, open_account
from tests.support import ROOT


def directives(response: httpx.Response) -> dict[str, str]:
    """The response's Content-Security-Policy, by directive."""
    policy = response.headers.get("content-security-policy", "")
    out = {}
    for part in policy.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            out[name] = value
    return out


def assert_basics(response: httpx.Response) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff", response.url
    assert response.headers.get("x-frame-options") == "DENY", response.url
    assert directives(response).get("frame-ancestors") == "'none'", response.url
    assert "server" not in response.headers, response.url


@pytest.fixture(scope="module")
def partner(app_client: TestClient, flaky_package: bytes):  # type: ignore[no-untyped-def]
    return onboard_partner(app_client, "hdr", flaky_package)


def test_portal_pages_allow_only_their_own_scripts(app_client: TestClient, partner) -> None:  # type: ignore[no-untyped-def]
    app_client.cookies.clear()
    pages = [app_client.get("/portal/login"), app_client.get("/portal", follow_redirects=False),
             app_client.get("/portal/static/portal.js"), app_client.get("/portal/no/such/page"),
             app_client.get("/portal/deployments", headers=partner.owner.headers()),
             app_client.get("/portal/models/nothing", headers=partner.owner.headers())]
    assert [p.status_code for p in pages] == [200, 303, 200, 404, 200, 404]
    for page in pages:
        assert_basics(page)
        csp = directives(page)
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'", csp
        assert "unsafe" not in page.headers["content-security-policy"]
        assert csp["form-action"] == "'self'" and csp["base-uri"] == "'none'"


def test_finance_pages_run_no_script(app_client: TestClient) -> None:
    app_client.cookies.clear()
    pages = [app_client.get("/finance/login"), app_client.get("/finance", follow_redirects=False),
             app_client.get("/finance", headers=admin_headers()),
             app_client.get("/finance/charts/split.svg", headers=admin_headers())]
    assert [p.status_code for p in pages] == [200, 303, 200, 200]
    for page in pages:
        assert_basics(page)
        csp = directives(page)
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'none'", csp
        assert csp["form-action"] == "'self'"


def test_api_answers_load_nothing_and_are_never_framed(app_client: TestClient) -> None:
    answers = [app_client.get("/healthz"), app_client.get("/v1/requests/req_x"), app_client.get("/openapi.json"),
               app_client.get("/v1/admin/pools", headers=admin_headers()), app_client.get("/no/such/path"),
               app_client.post("/v1/webhooks", content=b"x" * (2 << 20),
                               headers={"Content-Type": "application/json"})]
    assert [a.status_code for a in answers] == [200, 401, 200, 200, 404, 413]
    for answer in answers:
        assert_basics(answer)
        assert directives(answer)["default-src"] == "'none'"
    docs = app_client.get("/docs")
    assert docs.status_code == 200
    assert_basics(docs)  # Swagger UI loads its scripts from a CDN; it only may not be framed


def test_output_files_are_sandboxed(app_client: TestClient, partner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model may return any file with any content type; served from this origin, an HTML
    "output" must not run script beside the portal's cookie."""
    from gateway.models import File, Request
    from kit.db import session_scope
    from kit.signing import sign
    from kit.storage import get_storage

    customer = open_account(app_client, "hdr customer")
    r = app_client.post(f"/v1/models/{partner.slug}/{partner.model}/requests", headers=customer.key,
                        json={"input": {}})
    assert r.status_code == 201, r.text
    page = tmp_path / "page.html"
    page.write_bytes(b"<html><script>fetch('/v1/partner/keys')</script></html>")
    with session_scope() as session:  # what a worker stores when a model returns that file
        req = session.get(Request, r.json()["id"])
        assert req is not None
        key = f"outputs/{req.account_id}/{req.id}/page.html"
        f = File(account_id=req.account_id, request_id=req.id, storage_key=key, file_name="page.html",
                 content_type="text/html", size=get_storage().put_file(key, page))
        session.add(f)
        session.flush()
        file_id = f.id
    expires, signature = sign(file_id, 60)
    served = app_client.get(f"/v1/files/{file_id}", params={"expires": expires, "signature": signature})
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    csp = directives(served)
    assert "sandbox" in csp and csp["default-src"] == "'none'", csp
    assert served.headers["x-content-type-options"] == "nosniff"


# -- HSTS --------------------------------------------------------------------------------------

def test_hsts_follows_the_setting(engine) -> None:  # type: ignore[no-untyped-def]
    from gateway.app import create_app

    assert hsts_max_age(get_settings()) == 0  # tests, like development, run on plain HTTP
    with TestClient(create_app(check_schema=False)) as client:
        assert "strict-transport-security" not in client.get("/healthz").headers
    os.environ["MEDIAGATE_HSTS_MAX_AGE_S"] = "600"
    get_settings.cache_clear()
    try:
        with TestClient(create_app(check_schema=False)) as client:
            for path in ("/healthz", "/portal/login", "/finance/login", "/v1/usage"):
                assert client.get(path).headers["strict-transport-security"] == "max-age=600; includeSubDomains"
    finally:
        del os.environ["MEDIAGATE_HSTS_MAX_AGE_S"]
        get_settings.cache_clear()
    production = Settings(env="production", secret_key="s" * 32, admin_key="a" * 32,
                          master_key="bXktb3duLW1hc3Rlci1rZXktMzItYnl0ZXMhISEhISE=")
    assert hsts_max_age(production) == YEAR_S
    assert hsts_max_age(production.model_copy(update={"hsts_max_age_s": 0})) == 0


# -- the real server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(engine) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """`mediagate serve`, as production starts it: its URL and its log."""
    port = free_port()
    log_path = Path(os.environ.get("MEDIAGATE_DATA_DIR", "/tmp")) / f"serve-{port}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "mediagate serve did not start"
            time.sleep(0.1)
        yield url, log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.timeout(90)
def test_the_served_api_sends_no_server_banner(served: tuple[str, Path]) -> None:
    url, _ = served
    for path in ("/healthz", "/v1/requests/req_x", "/portal/login", "/finance/login", "/no/such/path"):
        r = httpx.get(f"{url}{path}")
        assert "server" not in r.headers, (path, r.headers.get("server"))
        assert_basics(r)


@pytest.mark.timeout(90)
def test_the_access_log_keeps_no_link_signature_or_invitation(served: tuple[str, Path]) -> None:
    url, log = served
    signature, invite = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    assert httpx.get(f"{url}/v1/files/fil_x", params={"expires": 1, "signature": signature}).status_code == 404
    assert httpx.get(f"{url}/portal/invite/{invite}").status_code == 404
    deadline = time.monotonic() + 10
    while "/portal/invite/" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    text = log.read_text()
    assert '"GET /v1/files/fil_x?… HTTP/1.1" 404' in text, text
    assert signature not in text and invite not in text and "Logging error" not in text, text

"""Portal fixtures: the app in-process (TestClient) or served by uvicorn for headless Chromium."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from kit.settings import get_settings

ADMIN = {"Authorization": f"Bearer {get_settings().admin_key}"}
PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[3] / "var" / "portal-screenshots"


@pytest.fixture
def api(committed: Engine) -> Iterator[TestClient]:
    from gateway.app import create_app

    with TestClient(create_app()) as client:
        yield client


def onboard(api: TestClient, slug: str, *, email: str | None = None, role: str = "owner",
            password: str = PASSWORD) -> dict[str, str]:
    """A partner (through the admin API) and a member who can sign in; returns the key headers."""
    r = api.post("/v1/admin/partners", json={"slug": slug, "name": f"{slug.title()} Labs"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    key = {"Authorization": f"Bearer {r.json()['api_key']}"}
    if email:
        r = api.post("/v1/partner/members", json={"email": email, "name": email.split("@")[0].title(),
                                                   "role": role, "password": password}, headers=key)
        assert r.status_code == 201, r.text
    return key


def form_token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token in the form"
    return m.group(1)


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = client.get("/portal/login")
    r = client.post("/portal/login", data={"email": email, "password": password, "csrf_token": form_token(page.text),
                                           "next": "/portal"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    home = client.get("/portal")
    assert home.status_code == 200
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(engine: Engine) -> Iterator[str]:
    """The whole app served by uvicorn on a free loopback port."""
    import uvicorn

    from gateway.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, driven by Playwright (no browser is ever downloaded)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server: str, committed: Engine):  # type: ignore[no-untyped-def]
    """A fresh browser context; console errors and CSP violations fail the test."""
    context = browser.new_context(base_url=live_server, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    page.errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()
    assert not [e for e in errors if "401" not in e], errors


def shot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    """A full-page screenshot under var/portal-screenshots/ (looked at by eye)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

"""The finance pages in headless Chromium: sign in, revenue with charts, revenue share,
reconciliation, CSV export. Screenshots go to $MEDIAGATE_DATA_DIR/finance-screenshots
(checked by eye: bars per month, the share donut, the tables).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing import service as billing
from billing.close import service as close
from billing.reports.auth import issue_finance_key
from kit.db import session_scope
from tests.billing import factories as f
from tests.billing.conftest import LiveApp

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("MEDIAGATE_DATA_DIR", "/tmp")) / "finance-screenshots"


@pytest.fixture
def browser_page(served_app: LiveApp) -> Iterator:  # type: ignore[type-arg]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(base_url=served_app.base, viewport={"width": 1500, "height": 1000},
                                      accept_downloads=True)
        yield context.new_page()
        context.close()
        browser.close()


def _seed() -> str:
    with session_scope() as s:
        bfl, acme = f.partner(s, "bfl"), f.partner(s, "acme")
        pro = f.model(s, bfl, slug="flux-pro", tier="partner_priced", unit="megapixels", price=50_000,
                      platform_fee_bps=2_500)
        dev = f.model(s, acme, slug="flux-dev", tier="revenue_share", price=25_000, licensor="bfl", royalty_bps=1_500)
        schnell = f.model(s, acme, slug="flux-schnell", tier="open", price=3_000)
        billing.ensure_payee(s, "partner", bfl.id, stripe_account_id="acct_bfl")
        customers = [f.account(s), f.account(s), f.account(s, mode="prepaid")]
        for month, volume in (("2026-06", 3), ("2026-07", 5), ("2026-08", 4), ("2026-09", 7)):
            for i in range(volume):
                for c in customers[:2]:
                    f.use(s, c, pro, f.at(month, day=1 + i), {"megapixels": 2 + i % 3, "images": 1})
                    f.use(s, c, dev, f.at(month, day=1 + i), {"images": 1 + i % 2})
                    f.use(s, c, schnell, f.at(month, day=1 + i), {"images": 4})
            if month == "2026-09":
                billing.refund_usage(s, f.use(s, customers[0], pro, f.at(month), {"megapixels": 4}).id,
                                     when=f.at(month, day=28))
            close.close_period(s, month)
        return issue_finance_key(s, name="Ada (finance)")


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_finance_pages_in_a_browser(browser_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page = browser_page
    key = _seed()
    page.goto("/finance")
    assert "/finance/login" in page.url
    page.fill("#key", "not-a-key")
    page.click("button[type=submit]")
    expect(page.locator(".bad")).to_contain_text("not a finance key")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/finance")
    expect(page.locator("h1")).to_have_text("Revenue, 2026-09")
    bars = page.locator("#chart-revenue svg rect.bar")
    assert bars.count() >= 12  # three shares over the four months with revenue
    assert page.locator("#chart-split svg path.slice").count() == 4
    expect(page.locator("#by-model")).to_contain_text("bfl/flux-pro")
    expect(page.locator("#by-tier")).to_contain_text("revenue_share")
    _shot(page, "01-revenue")

    page.click("header nav >> text=Revenue share")
    expect(page.locator("#revenue-share")).to_contain_text("pending")
    rows = page.locator("#revenue-share tr")
    assert rows.count() == 4  # header; bfl and acme as partners; bfl as licensor
    _shot(page, "02-revenue-share")
    with page.expect_download() as download:
        page.click("text=CSV")
    text = Path(download.value.path()).read_text()
    assert text.startswith("payee,kind,ref,currency,requests,gross_micros")

    page.click("header nav >> text=Reconciliation")
    expect(page.locator("#recon-verdict")).to_have_text("balanced")
    assert page.locator("#checks .bad").count() == 0
    _shot(page, "03-reconciliation")

    page.fill("#period", "2026-07")
    page.click("text=Show")
    expect(page.locator("h1")).to_contain_text("2026-07")
    page.click("header nav >> text=Periods")
    expect(page.locator("#periods")).to_contain_text("closed")
    _shot(page, "04-periods")
    page.click("text=Sign out")
    page.goto("/finance/periods")
    assert "/finance/login" in page.url

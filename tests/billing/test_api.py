"""Billing over HTTP: finance role and exports, partner statements, customer top-ups, the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from billing import service as billing
from billing.close import service as close
from billing.reports.auth import issue_finance_key
from kit.db import session_scope
from kit.settings import get_settings
from partners import service as partners
from tests.billing import factories as f
from tests.support import ROOT


@pytest.fixture
def api(committed) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from gateway.app import create_app

    with TestClient(create_app(check_schema=False), follow_redirects=False) as client:
        yield client


@pytest.fixture
def books(committed) -> dict:  # type: ignore[no-untyped-def]
    """Two partners with usage in a closed period, one of them paid, and a finance key."""
    with session_scope() as s:
        mine, _ = partners.create_partner(s, slug="mine", name="Mine Labs")
        mine_key = partners.issue_key(s, partner_id=mine.id)
        theirs = f.partner(s, "theirs")
        pro = f.model(s, mine, slug="pro", tier="partner_priced", price=1_000_000, platform_fee_bps=2_500)
        dev = f.model(s, theirs, slug="dev", tier="revenue_share", price=500_000, licensor="mine", royalty_bps=2_000)
        billing.ensure_payee(s, "partner", mine.id, stripe_account_id="acct_mine")
        customer = f.account(s)
        for _ in range(2):
            f.use(s, customer, pro, f.at("2026-09"))
        f.use(s, customer, dev, f.at("2026-09"))
        close.close_period(s, "2026-09")
        key = issue_finance_key(s, name="Ada (finance)")
    return {"finance": key, "partner": mine_key}


def test_finance_pages_need_the_finance_role(api: TestClient, books: dict) -> None:
    page = api.get("/finance/revenue-share?period=2026-09")
    assert page.status_code == 303 and page.headers["location"].startswith("/finance/login")
    assert api.get("/finance/export/revenue-share.csv?period=2026-09").status_code == 401
    assert api.get("/finance/export/revenue-share.csv", headers={"Authorization": "Key mg_live_nope"}).status_code == 401
    bad = api.post("/finance/login", data={"key": "wrong", "next": "/finance"})
    assert bad.status_code == 401
    ok = api.post("/finance/login", data={"key": books["finance"], "next": "/finance/reconciliation?period=2026-09"})
    assert ok.status_code == 303 and ok.headers["location"] == "/finance/reconciliation?period=2026-09"
    assert "httponly" in ok.headers["set-cookie"].lower() and books["finance"] not in ok.headers["set-cookie"]
    page = api.get("/finance/reconciliation?period=2026-09")
    assert page.status_code == 200 and "balanced" in page.text
    api.cookies.clear()
    api.cookies.set("mg_finance", "fkey_forged.9999999999.c2lnbmF0dXJl")
    assert api.get("/finance/periods").status_code == 303


def test_exports_csv_and_json(api: TestClient, books: dict) -> None:
    auth = {"Authorization": f"Key {books['finance']}"}
    rows = list(csv.DictReader(io.StringIO(api.get("/finance/export/revenue-share.csv?period=2026-09",
                                                   headers=auth).text)))
    by_payee = {(r["kind"], r["payee"]): r for r in rows}
    partner = by_payee[("partner", "Mine Labs")]
    assert (partner["gross_micros"], partner["fees_micros"], partner["net_micros"]) == ("2000000", "500000", "1500000")
    assert (partner["payout_cents"], partner["payout_status"]) == ("150", "pending")
    licensor = by_payee[("licensor", "mine")]
    assert (licensor["royalties_micros"], licensor["payout_status"]) == ("100000", "carried (no payout account)")
    recon = api.get("/finance/export/reconciliation.json?period=2026-09", headers=auth).json()
    assert recon["ok"] and recon["customer_totals"]["invoiced_micros"] == 2_500_000
    by_tier = api.get("/finance/export/revenue-by-tier.json?period=2026-09", headers=auth).json()["rows"]
    assert {r["tier"]: r["gross_micros"] for r in by_tier} == {"partner_priced": 2_000_000, "revenue_share": 500_000}
    assert api.get("/finance/export/nope.csv", headers=auth).status_code == 404
    svg = api.get("/finance/charts/split.svg?period=2026-09", headers=auth)
    assert svg.headers["content-type"].startswith("image/svg+xml") and "<path" in svg.text


def test_partners_see_only_their_own_statements(api: TestClient, books: dict) -> None:
    headers = {"Authorization": f"Bearer {books['partner']}"}
    statements = api.get("/v1/partner/statements", headers=headers).json()
    kinds = sorted((s["net_micros"], s["payout_status"]) for s in statements)
    assert kinds == [(100_000, "carried (no payout account)"), (1_500_000, "pending")]  # its own earnings and the royalties it is owed
    detail = api.get("/v1/partner/statements/2026-09", headers=headers).json()
    assert any(line["model"] == "mine/pro" for s in detail for line in s["lines"])
    assert api.get("/v1/partner/statements/2026-08", headers=headers).status_code == 404
    assert api.get("/v1/partner/statements").status_code == 401


def test_admin_issues_finance_keys(api: TestClient, committed) -> None:  # type: ignore[no-untyped-def]
    admin = {"Authorization": f"Key {get_settings().admin_key}"}
    created = api.post("/finance/api/keys", json={"name": "Grace"}, headers=admin)
    assert created.status_code == 201 and created.json()["key"].startswith("mgf_")
    finance = {"Authorization": f"Key {created.json()['key']}"}
    assert api.post("/finance/api/keys", json={"name": "x"}, headers=finance).status_code == 401
    assert api.get("/finance/export/revenue-share.json?period=2026-09", headers=finance).status_code == 200


def test_finance_refund_by_request_id(api: TestClient, books: dict) -> None:
    with session_scope() as s:
        from sqlalchemy import select

        from billing.models import UsageRecord

        request_id = s.scalar(select(UsageRecord.request_id).where(UsageRecord.amount_micros == 1_000_000))
    auth = {"Authorization": f"Key {books['finance']}"}
    refund = api.post("/finance/api/refunds", json={"request_id": request_id, "reason": "bad output"}, headers=auth)
    assert refund.status_code == 201, refund.text
    assert refund.json()["partner_micros"] == 750_000 and refund.json()["period"] == "2026-11"
    again = api.post("/finance/api/refunds", json={"request_id": request_id}, headers=auth)
    assert again.status_code == 422


def test_close_from_the_cli_is_safe_to_run_twice(books: dict) -> None:
    def run() -> dict:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "billing", "close", "--period", "2026-10",
                              "--no-send", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    first, second = run(), run()
    assert (first["already_closed"], second["already_closed"]) == (False, True)
    # The licensor with no payout account carries its royalties into a statement of its own.
    assert first["totals"] == second["totals"] and first["totals"]["statements"] == 1
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "billing", "close", "--period", "2099-01"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not ended" in refused.stdout

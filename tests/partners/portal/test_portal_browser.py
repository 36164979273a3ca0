"""The portal in headless Chromium: sign in, create a model, upload a package in chunks with a
progress bar, deploy, watch status and logs live, roll out and back, see usage and earnings.

Screenshots land in var/portal-screenshots/ and were checked by eye.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.partners.portal.conftest import ADMIN, PASSWORD, onboard, shot
from tests.support import ROOT, WorkerProcess

pytestmark = pytest.mark.browser
ART = ROOT / "examples" / "procedural-art"


def _package(tmp: Path) -> Path:
    from partners.packaging import build_package

    out = tmp / "procedural-art.oci.tar"
    build_package(ART, out)
    return out


def _sign_in(page, email: str = "ada@acme.test") -> None:  # type: ignore[no-untyped-def]
    page.goto("/portal/models")
    assert "/portal/login" in page.url
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/portal/models")


def test_sign_in_create_upload_deploy_watch_logs_and_earn(page, api: TestClient, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    from partners import logs

    key = onboard(api, "acme", email="ada@acme.test")
    page.goto("/portal")
    expect(page.locator("h1")).to_have_text("Sign in")
    shot(page, "01-sign-in")
    page.fill("input[name=email]", "ada@acme.test")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_contain_text("do not match")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/portal")
    expect(page.locator("h1")).to_have_text("Acme Labs")
    shot(page, "02-dashboard-empty")

    # Create a model.
    page.click("nav.main >> text=Models")
    page.fill("input[name=slug]", "art")
    page.fill("input[name=title]", "Procedural Art")
    page.fill("textarea[name=description]", "Domain-warped noise painted with a palette picked by the prompt.")
    page.click("text=Create model")
    page.wait_for_url("**/portal/models/art?notice=model")
    expect(page.locator(".notice")).to_contain_text("Model created")

    # Upload in 2 KiB chunks so the progress bar and the resumable protocol really run.
    package = _package(tmp_path)
    page.eval_on_selector("#upload-form", "f => { f.dataset.chunkBytes = '2048'; }")
    page.set_input_files("#upload-file", str(package))
    chunks: list[str | None] = []
    page.on("request", lambda r: chunks.append(r.headers.get("upload-offset")) if r.method == "PATCH" else None)
    dropped: list[str] = []

    def drop_one_chunk(route) -> None:  # type: ignore[no-untyped-def]
        # The connection drops once mid-upload: the script asks for the offset and resumes.
        if route.request.method == "PATCH" and route.request.headers.get("upload-offset") == "4096" and not dropped:
            dropped.append("4096")
            route.abort()
        else:
            route.continue_()

    page.route("**/v1/partner/uploads/*", drop_one_chunk)
    page.click("#upload-button")
    expect(page.locator("#upload-status")).to_contain_text("Version 1 is ready", timeout=15_000)
    assert page.eval_on_selector("#upload-progress", "p => p.value") == 100
    shot(page, "03-upload-done")
    assert dropped == ["4096"] and chunks.count("4096") == 2  # resumed at the same offset
    page.errors[:] = [e for e in page.errors if "ERR_FAILED" not in e]  # the drop we caused
    assert len(chunks) == -(-package.stat().st_size // 2048) + 1 and chunks[0] == "0"
    page.wait_for_url("**/portal/models/art?notice=uploaded")
    expect(page.locator("#versions")).to_contain_text("v1")
    shot(page, "04-model-with-version")

    # Deploy it.
    page.click("#deploy-button")
    page.wait_for_url(re.compile(r".*/portal/deployments/dep_\w+\?notice=deployed"))
    dep_id = re.search(r"(dep_\w+)", page.url).group(1)
    expect(page.locator("#deployment-state")).to_contain_text("idle")

    # A worker starts a replica and logs; the page follows without reloading.
    logs.report_replica(dep_id, f"{dep_id}-r1", "starting")
    expect(page.locator("#deployment-state")).to_contain_text("starting", timeout=6_000)
    for line in ("loading palette tables", "warming the noise cache", "ready to paint"):
        logs.log_line(dep_id, line, replica_id=f"{dep_id}-r1")
    logs.report_replica(dep_id, f"{dep_id}-r1", "ready")
    expect(page.locator("#deployment-state")).to_contain_text("ready", timeout=6_000)
    expect(page.locator("#log-lines")).to_contain_text("ready to paint", timeout=6_000)

    # A real customer request through a real worker, then its usage and earnings.
    r = api.put("/v1/partner/models/art/pricing", json={"tier": "partner_priced", "unit": "megapixels",
                                                        "unit_price_micros": 25_000, "platform_fee_bps": 2_000},
                headers=key)
    assert r.status_code == 200, r.text
    customer = {"Authorization": f"Key {api.post('/v1/admin/accounts', json={'name': 'C'}, headers=ADMIN).json()['api_key']}"}
    worker = WorkerProcess(pools="shared", concurrency=1)
    try:
        r = api.post("/v1/models/acme/art/requests", json={"input": {"prompt": "a red sunset", "width": 512, "height": 512}},
                     headers={**customer, "Prefer": "wait=60"})
        assert r.status_code in (200, 201, 202), r.text
        envelope = r.json()
        assert envelope["status"] == "succeeded", (envelope, worker.output()[-3000:])
    finally:
        worker.stop()
    req_id = envelope["id"]
    logs.log_line(dep_id, "painted 512x512 in 4 passes", replica_id=f"{dep_id}-r1", request_id=req_id)
    expect(page.locator("#log-lines")).to_contain_text("painted 512x512", timeout=6_000)
    page.reload()
    expect(page.locator("text=Recent requests")).to_be_visible()
    shot(page, "05-deployment-live")

    page.click(f"a[href='/portal/requests/{req_id}']")
    expect(page.locator("h1")).to_contain_text(req_id)
    expect(page.locator(".log")).to_contain_text("painted 512x512")
    shot(page, "06-request-logs")

    page.click("nav.main >> text=Usage")
    expect(page.locator("svg.chart rect.s-ok")).to_have_count(1)
    shot(page, "07-usage")
    page.click("nav.main >> text=Earnings")
    earned = api.get("/v1/partner/earnings", headers=key).json()["totals"]["usd"]["partner_micros"]
    assert earned > 0
    expect(page.locator("#earned")).to_have_text(f"${earned / 1e6:,.4f}")
    expect(page.locator("#earnings")).to_contain_text("acme/art")
    shot(page, "08-earnings")
    page.click("nav.main >> text=Dashboard")
    shot(page, "09-dashboard")


def test_roll_out_and_back_keys_and_members(page, api: TestClient, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    key = onboard(api, "acme", email="ada@acme.test")
    api.post("/v1/partner/models", json={"slug": "art"}, headers=key)
    data = _package(tmp_path).read_bytes()
    for _ in range(2):
        r = api.post("/v1/partner/models/art/versions", content=data,
                     headers={**key, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201
    dep = api.post("/v1/partner/deployments", json={"model": "art", "version": 1}, headers=key).json()
    _sign_in(page)

    page.goto(f"/portal/deployments/{dep['id']}")
    page.fill("input[name=max_replicas]", "3")
    page.click("text=Save scaling")
    expect(page.locator(".notice")).to_contain_text("Scaling updated")
    page.select_option("select[name=version]", "2")
    page.click("#rollout-button")
    expect(page.locator(".notice")).to_contain_text("Rolled out")
    expect(page.locator("h1 .ver")).to_have_text("v2")
    page.click("#rollback-button")  # confirms through the dialog
    expect(page.locator(".notice")).to_contain_text("Rolled back")
    assert dep["id"] in page.url
    expect(page.locator("h1 .ver")).to_have_text("v1")
    expect(page.locator(".timeline").first).to_contain_text("rollback")
    shot(page, "10-rolled-back")

    page.goto("/portal/deployments")
    expect(page.locator("#deployment-rows tr")).to_have_count(2)
    shot(page, "11-deployments")

    page.click("nav.main >> text=API keys")
    page.fill("input[name=name]", "ci")
    page.click("text=Create key")
    secret = page.input_value("#new-key")
    assert secret.startswith("mgp_")
    assert api.get("/v1/partner/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    shot(page, "12-keys")

    page.click("nav.main >> text=Members")
    page.fill("input[name=email]", "bob@acme.test")
    page.select_option("select[name=role]", "viewer")
    page.click("text=Create invitation")
    invite = page.input_value("input.secret")
    assert "/portal/invite/" in invite
    shot(page, "13-members")
    page.click("button.link:has-text('Sign out')")
    page.wait_for_url("**/portal/login")


def test_the_upload_script_hashes_like_hashlib(page) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    page.goto("/portal/login")
    for n in (0, 1, 55, 56, 63, 64, 65, 1000, 70_001):
        data = bytes((i * 7 + n) % 256 for i in range(n))
        got = page.evaluate("(xs) => window.mediagateSha256(new Uint8Array(xs))", list(data))
        assert got == hashlib.sha256(data).hexdigest(), n

"""Secrets never show: API keys, webhook and Stripe secrets, passwords, session tokens and the
platform's own keys appear in no log line (the API in-process, a real worker, the model in its
sandbox) and in no error body, however they are used or misused.

Every secret is fresh and random for this run, so finding one anywhere is a leak, not a fixture
value that happens to match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.conftest import truncate_all
from tests.e2e.api_support import WORKER_ENV, Receiver, wait_for
from tests.security.conftest import PASSWORD, sign_in
from tests.support import WorkerProcess, package_bytes

pytestmark = pytest.mark.timeout(180)

ENV_DUMP = '''
import os, sys
from engine import Model

class Dump(Model):
    def predict(self, fail: bool = False) -> dict:
        seen = {"env": dict(os.environ), "argv": sys.argv}
        for path in ("/opt/mediagate/config.json", "/opt/mediagate/manifest.json", "/proc/self/environ"):
            try:
                seen[path] = open(path, "rb").read().decode(errors="replace")
            except OSError as exc:
                seen[path] = repr(exc)
        print("what the model sees:", seen)
        print("what the model sees:", seen, file=sys.stderr)
        if fail:
            raise RuntimeError(f"failing with what it sees: {seen}")
        return {"seen": seen}
'''


def _token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def platform_secrets(engine: Engine, stripe_stand_in: object) -> Iterator[dict[str, str]]:
    """Fresh platform secrets in the environment (this process and the worker's), Stripe's
    stand-in taking our key and webhook secret; everything put back afterwards."""
    from billing.settings import get_billing_settings
    from billing.stripe_gateway import get_gateway
    from kit.settings import get_settings
    from partners.tenancy.packages import artifact_store

    values = {
        "MEDIAGATE_ADMIN_KEY": _token("mga_"),
        "MEDIAGATE_SECRET_KEY": _token(),
        "MEDIAGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "MEDIAGATE_STRIPE_API_KEY": _token("sk_test_"),
        "MEDIAGATE_STRIPE_WEBHOOK_SECRET": _token("whsec_"),
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    # Process-wide objects built from these settings are built again, now and afterwards.
    caches = (get_settings, get_billing_settings, get_gateway, artifact_store)
    for cached in caches:
        cached.cache_clear()
    try:
        yield {k.removeprefix("MEDIAGATE_").lower(): v for k, v in values.items()}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for cached in caches:
            cached.cache_clear()
        truncate_all(engine)


class ErrorRecorder:
    """Every error body, and every header, the app answered with."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.seen.append(f"{response.request.method} {response.url.path} -> {response.status_code} "
                         f"{json.dumps(dict(response.headers))}")
        if response.status_code >= 400:
            self.seen.append(response.text)


def _variants(secret: str) -> list[str]:
    """The secret as it is and nearly (a typo), in each scheme a client might send it in."""
    near = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    return [f"{scheme} {value}" for value in (secret, near) for scheme in ("Key", "Bearer")] + [secret]


def _misuse(app: TestClient, found: dict[str, str], model: str) -> None:
    """Every secret sent where it does not belong, and into validation errors."""
    for value in found.values():
        for auth in _variants(value):
            for method, path in (("GET", "/v1/requests/req_x"), ("GET", "/v1/partner/models"),
                                 ("GET", "/v1/admin/pools"), ("GET", "/finance/api/refunds"),
                                 ("POST", "/finance/api/refunds"), ("GET", "/finance/export/revenue.csv"),
                                 ("GET", "/portal"), ("GET", "/v1/webhooks/secret")):
                app.request(method, path, headers={"Authorization": auth}, follow_redirects=False)
        app.post("/finance/login", data={"key": value[:-1] + "Z", "next": "/finance"})
        app.post("/portal/login", data={"email": "owner@leaky.example", "password": value, "csrf_token": value})
    key = {"Authorization": f"Key {found['customer_key']}"}
    partner = {"Authorization": f"Bearer {found['partner_key']}"}
    for value in found.values():
        app.post(f"/v1/models/{model}/requests", headers={**key, "Priority": value, "Idempotency-Key": value * 20},
                 json={"input": {"fail": value}, "webhook": value})
        app.post(f"/v1/models/{model}/requests", headers={**key, "Request-Timeout": value}, json={"input": {}})
        app.get("/v1/requests/req_x/events", headers={**key, "Last-Event-ID": value})
        app.patch("/v1/account", headers=key, json={"retention_days": value})
        app.post("/v1/webhooks", headers=key, json={"url": value, "events": [value]})
        app.post("/v1/partner/members", headers=partner, json={"email": value, "password": value[:5]})
        app.post("/v1/partner/keys", headers=partner, json={"name": value * 20})
        app.post("/v1/billing/topups", headers=key, json={"amount_cents": value})
        app.post("/v1/stripe/webhooks", content=json.dumps({"id": value}).encode(),
                 headers={"Stripe-Signature": f"t={int(time.time())},v1={value}"})


def _stripe_signature(payload: bytes, secret: str) -> str:
    stamp = int(time.time())
    return f"t={stamp},v1=" + hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()


def _leaks(found: dict[str, str], texts: dict[str, str]) -> list[str]:
    problems = []
    for name, value in found.items():
        # The whole secret, or its random part without the well-known prefix.
        cores = {value, value.split("_")[-1]} if len(value.split("_")[-1]) >= 16 else {value}
        for where, text in texts.items():
            for core in cores:
                at = text.find(core)
                if at >= 0:
                    line = text[text.rfind("\n", 0, at) + 1:text.find("\n", at) % (len(text) + 1)]
                    problems.append(f"{name} appears in {where}: {line.replace(core, '<' + name + '>')[:400]}")
                    break
    return problems


def test_no_secret_appears_in_logs_or_error_bodies(platform_secrets: dict[str, str], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from gateway.app import create_app

    caplog.set_level(logging.INFO)
    for ours in ("gateway", "partners", "billing", "kit", "moderation", "engine", "stripe"):
        caplog.set_level(logging.DEBUG, logger=ours)
    found = dict(platform_secrets)
    admin = {"Authorization": f"Bearer {found['admin_key']}"}
    model_dir = tmp_path / "dump"
    model_dir.mkdir()
    (model_dir / "mediagate.toml").write_text('[model]\nname = "dump"\nentrypoint = "predict:Dump"\n')
    (model_dir / "predict.py").write_text(ENV_DUMP)
    archive = package_bytes(model_dir, tmp_path)

    worker = WorkerProcess(pools="shared", concurrency=2, env=WORKER_ENV)
    good, failing = Receiver(), Receiver([500] * 10)
    recorder = ErrorRecorder()
    try:
        with TestClient(create_app()) as app:
            app.event_hooks["response"] = [recorder]
            r = app.post("/v1/admin/partners", json={"slug": "leaky", "name": "Leaky Labs"}, headers=admin)
            found["partner_key"] = r.json()["api_key"]
            partner = {"Authorization": f"Bearer {found['partner_key']}"}
            assert app.post("/v1/partner/models", json={"slug": "dump"}, headers=partner).status_code == 201
            r = app.post("/v1/partner/models/dump/versions", content=archive,
                         headers={**partner, "Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            assert app.put("/v1/partner/models/dump/pricing", headers=partner,
                           json={"tier": "open", "unit": "requests", "unit_price_micros": 1_000}).status_code == 200
            assert app.post("/v1/partner/deployments", json={"model": "dump"}, headers=partner).status_code == 201
            found["password"] = PASSWORD
            r = app.post("/v1/partner/members", headers=partner, json={
                "email": "owner@leaky.example", "role": "owner", "password": PASSWORD})
            assert r.status_code == 201, r.text
            r = app.post("/v1/partner/members", headers=partner, json={"email": "invited@leaky.example"})
            found["invite_token"] = r.json()["invite_url"].rsplit("/", 1)[-1]
            found["portal_session"] = sign_in(app, "owner@leaky.example").token

            r = app.post("/v1/admin/accounts", json={"name": "Leaky customer"}, headers=admin)
            found["customer_key"] = r.json()["api_key"]
            r = app.post("/v1/admin/accounts", json={"name": "Prepaid", "billing_mode": "prepaid"}, headers=admin)
            found["prepaid_key"] = r.json()["api_key"]
            key = {"Authorization": f"Key {found['customer_key']}"}
            found["webhook_secret"] = app.get("/v1/webhooks/secret", headers=key).json()["secret"]
            found["webhook_url_token"] = _token()
            r = app.post("/v1/webhooks", headers=key,
                         json={"url": f"{failing.url}?token={found['webhook_url_token']}"})
            assert r.status_code == 201, r.text
            found["finance_key"] = app.post("/finance/api/keys", json={"name": "books"}, headers=admin).json()["key"]
            assert app.post("/finance/login", data={"key": found["finance_key"]},
                            follow_redirects=False).status_code == 303

            # The model runs (and fails), its webhooks are signed and retried until they give up.
            ok = app.post("/v1/models/leaky/dump/requests", headers=key, json={"input": {}, "webhook": good.url})
            bad = app.post("/v1/models/leaky/dump/requests", headers=key, json={"input": {"fail": True}})
            outcomes = [wait_for(app, key, r.json()["id"], timeout=60) for r in (ok, bad)]
            assert [o["status"] for o in outcomes] == ["succeeded", "failed"], outcomes
            good.wait(1)
            failing.wait(10, timeout=30)

            # Stripe, with our key: a top-up, a failing top-up, a real and a forged webhook.
            prepaid = {"Authorization": f"Key {found['prepaid_key']}"}
            r = app.post("/v1/billing/topups", headers=prepaid, json={"amount_cents": 1_000})
            assert r.status_code == 201, r.text
            payload = json.dumps({"id": "evt_leak", "object": "event", "type": "customer.created",
                                  "data": {"object": {"id": "cus_x", "object": "customer"}}}).encode()
            secret = found["stripe_webhook_secret"]
            assert app.post("/v1/stripe/webhooks", content=payload,
                            headers={"Stripe-Signature": _stripe_signature(payload, secret)}).status_code == 200
            assert app.post("/v1/stripe/webhooks", content=payload + b" ",
                            headers={"Stripe-Signature": _stripe_signature(payload, secret)}).status_code == 400

            _misuse(app, found, "leaky/dump")

            logs = app.get(f"/v1/partner/requests/{bad.json()['id']}/logs", headers=partner).json()
            model_view = json.dumps([outcomes, logs])
    finally:
        good.close()
        failing.close()
        worker.stop()

    out, err = capfd.readouterr()
    texts = {"the API's log records": caplog.text, "the test process's stdout": out,
             "the test process's stderr": err, "the worker's output": worker.output(),
             "the error bodies and headers": "\n".join(recorder.seen),
             "what the model saw (outputs, errors, logs)": model_view}
    assert "/opt/mediagate/config.json" in model_view, "the model's view was not captured"
    assert " ready." in worker.output(), "the worker's output was not captured"
    problems = _leaks(found, texts)
    assert problems == [], "\n".join(problems)


def test_log_redaction_cuts_url_credentials_queries_and_key_shaped_tokens() -> None:
    from kit.logsafe import redact

    line = ('HTTP Request: POST https://bob:pw@hooks.example.com/in?token=abc#x "HTTP/1.1 500" '
            "key mg_live_Zm9vYmFyYmF6cXV4 partner mgp_abcdefgh12 whsec_c2VjcmV0c2VjcmV0 sk_test_51Habc")
    assert redact(line) == ('HTTP Request: POST https://hooks.example.com/in?… "HTTP/1.1 500" '
                            "key mg_live_… partner mgp_… whsec_… sk_test_…")
    assert redact('"GET /v1/files/fil_1?expires=1&signature=abc HTTP/1.1" 200') == '"GET /v1/files/fil_1?… HTTP/1.1" 200'
    assert redact("GET /portal/invite/abcdefgh HTTP/1.1") == "GET /portal/invite/… HTTP/1.1"
    assert redact("webhook whe_1 to http://127.0.0.1:8000/hook failed") == \
        "webhook whe_1 to http://127.0.0.1:8000/hook failed"

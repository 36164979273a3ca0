"""Another account's or partner's ids: always 404 (never 403, never their data), and nothing
of theirs changes.

Two partners, each with a deployed model, and two customers, each with a finished request
(an output file, a webhook delivery), run on a real worker. Then each tries every route with
the other's ids.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from kit.db import session_scope, utcnow
from tests.e2e.api_support import WORKER_ENV, Receiver, wait_for
from tests.security.conftest import (
    CustomerAccount,
    PartnerOrg,
    admin_headers,
    onboard_partner,
    open_account,
)
from tests.support import WorkerProcess

pytestmark = pytest.mark.timeout(240)


@dataclass
class Customer:
    account: CustomerAccount
    request_id: str
    file_path: str  # the signed URL's path and query
    endpoint_id: str
    pool: str
    prompt: str  # a marker only this customer's data contains


@dataclass
class World:
    partners: tuple[PartnerOrg, PartnerOrg]
    customers: tuple[Customer, Customer]
    period: str


def _customer(app: TestClient, name: str, partner: PartnerOrg, receiver: Receiver) -> Customer:
    account = open_account(app, name)
    r = app.post("/v1/webhooks", json={"url": receiver.url, "description": f"{name} hooks"}, headers=account.key)
    assert r.status_code == 201, r.text
    endpoint_id = r.json()["id"]
    prompt = f"{name}-private-{endpoint_id[-6:]}"
    r = app.post(f"/v1/models/{partner.slug}/{partner.model}/requests", headers=account.key,
                 json={"input": {"size": 16}, "webhook": f"{receiver.url}?who={prompt}"})
    assert r.status_code == 201, r.text
    done = wait_for(app, account.key, r.json()["id"], timeout=90)
    assert done["status"] == "succeeded", done
    url = urlsplit(done["output"]["image"]["url"])
    return Customer(account, done["id"], f"{url.path}?{url.query}", endpoint_id, f"{name}-dedicated", prompt)


@pytest.fixture(scope="module")
def world(app_client: TestClient, flaky_package: bytes, engine: Engine) -> Iterator[World]:
    import redis

    from billing.close.service import close_period
    from billing.periods import period_of
    from kit.settings import get_settings

    redis.Redis.from_url(get_settings().redis_url).flushdb()
    worker = WorkerProcess(pools="shared", concurrency=2, env=WORKER_ENV)
    receiver = Receiver()
    try:
        acme = onboard_partner(app_client, "acme", flaky_package)
        beta = onboard_partner(app_client, "beta", flaky_package)
        alice = _customer(app_client, "alice", acme, receiver)
        bob = _customer(app_client, "bob", beta, receiver)
        receiver.wait(2, timeout=30)
        for c in (alice, bob):
            # After their requests ran: a dedicated pool would take their later requests.
            r = app_client.post("/v1/admin/pools", headers=admin_headers(),
                                json={"name": c.pool, "kind": "dedicated", "account_id": c.account.id})
            assert r.status_code == 201, r.text
        period = period_of(utcnow())
        with session_scope() as session:  # statements exist once a period closes
            close_period(session, period, now=utcnow() + dt.timedelta(days=32))
        yield World((acme, beta), (alice, bob), period)
    finally:
        receiver.close()
        worker.stop()


def _refused(r, *markers: str) -> str | None:  # type: ignore[no-untyped-def]
    """What is wrong with this answer to a foreign id, or None."""
    if r.status_code != 404:
        return f"answered {r.status_code}"
    leaked = [m for m in markers if m and m in r.text]
    return f"the 404 names {leaked}" if leaked else None


def _try(app: TestClient, calls: list[tuple[str, str, dict]], headers: dict[str, str], *markers: str) -> list[str]:
    problems = []
    for method, url, kwargs in calls:
        app.cookies.clear()
        r = app.request(method, url, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)
        wrong = _refused(r, *markers)
        if wrong:
            problems.append(f"{method} {url}: {wrong}")
    return problems


# -- customers -------------------------------------------------------------------------------

def test_a_customer_gets_404_for_every_id_of_another_account(app_client: TestClient, world: World) -> None:
    problems = []
    for me, other in (world.customers, world.customers[::-1]):
        rid, eid = other.request_id, other.endpoint_id
        calls = [
            ("GET", f"/v1/requests/{rid}", {}),
            ("GET", f"/v1/requests/{rid}", {"headers": {"Prefer": "wait=1"}}),
            ("POST", f"/v1/requests/{rid}/cancel", {}),
            ("GET", f"/v1/requests/{rid}/events", {}),
            ("GET", f"/v1/requests/{rid}/webhooks", {}),
            ("GET", f"/v1/webhooks/{eid}", {}),
            ("PATCH", f"/v1/webhooks/{eid}", {"json": {"enabled": False, "url": "https://evil.example/hook"}}),
            ("DELETE", f"/v1/webhooks/{eid}", {}),
            ("GET", f"/v1/pools/{other.pool}/stats", {}),
        ]
        problems += _try(app_client, [(m, u, dict(k)) for m, u, k in calls], me.account.key, other.prompt)
        # A read-only key is refused writes (403 for any id, so nothing is revealed); reads are 404.
        reads = [(m, u, dict(k)) for m, u, k in calls if m == "GET"]
        problems += _try(app_client, reads, me.account.read_only, other.prompt)
    assert problems == [], "\n".join(problems)

    # Nothing of theirs changed: the endpoint is still there and enabled, the request succeeded.
    for c in world.customers:
        r = app_client.get(f"/v1/webhooks/{c.endpoint_id}", headers=c.account.key)
        assert r.status_code == 200 and r.json()["enabled"] is True and "evil" not in r.json()["url"]
        assert app_client.get(f"/v1/requests/{c.request_id}", headers=c.account.key).json()["status"] == "succeeded"


def test_signed_file_links_open_only_the_file_they_were_signed_for(app_client: TestClient, world: World) -> None:
    alice, bob = world.customers
    for c in world.customers:
        assert app_client.get(c.file_path).status_code == 200  # the link itself is the capability
    a_path, a_query = alice.file_path.split("?")
    b_path, b_query = bob.file_path.split("?")
    q = {k: v[0] for k, v in parse_qs(a_query).items()}
    attempts = [
        f"{a_path}?{b_query}",  # bob's signature on alice's file
        f"{b_path}?{a_query}",
        f"{a_path}?expires={int(q['expires']) + 3600}&signature={q['signature']}",  # a longer life
        f"{a_path}?expires={q['expires']}&signature={q['signature'][:-2]}AA",
        f"{a_path}?expires=1&signature={q['signature']}",
    ]
    for url in attempts:
        for headers in ({}, bob.account.key):
            r = app_client.get(url, headers=headers)
            assert r.status_code == 404, (url, r.status_code)


def test_account_wide_reads_show_only_the_callers_own(app_client: TestClient, world: World) -> None:
    (acme, beta), (alice, bob) = world.partners, world.customers
    for me, other, mine in ((alice, bob, acme), (bob, alice, beta)):
        usage = app_client.get("/v1/usage", params={"account_id": other.account.id}, headers=me.account.key)
        assert usage.status_code == 200
        assert {line["model"] for line in usage.json()["lines"]} == {f"{mine.slug}/{mine.model}"}
        account = app_client.get("/v1/account", params={"account_id": other.account.id}, headers=me.account.key)
        assert account.json()["id"] == me.account.id
        hooks = app_client.get("/v1/webhooks", headers=me.account.key).json()
        assert [h["id"] for h in hooks] == [me.endpoint_id]
        for path in ("/v1/billing/balance", "/v1/billing/invoices"):
            r = app_client.get(path, params={"account_id": other.account.id}, headers=me.account.key)
            assert r.status_code == 200 and other.account.id not in r.text
        r = app_client.get(f"/v1/pools/{me.pool}/stats", headers=me.account.key)
        assert r.status_code == 200, r.text


# -- partners --------------------------------------------------------------------------------

def _partner_calls(other: PartnerOrg, request_id: str) -> list[tuple[str, str, dict]]:
    dep, up, model = other.deployment_id, other.upload_id, other.model
    return [
        ("GET", f"/v1/partner/models/{model}", {}),
        ("GET", f"/v1/partner/models/{model}/versions", {}),
        ("POST", f"/v1/partner/models/{model}/versions",
         {"content": b"x" * 64, "headers": {"Content-Type": "application/octet-stream"}}),
        ("PUT", f"/v1/partner/models/{model}/pricing", {"json": {"tier": "open", "unit": "images",
                                                                "unit_price_micros": 1}}),
        ("POST", "/v1/partner/deployments", {"json": {"model": model}}),
        ("GET", f"/v1/partner/deployments/{dep}", {}),
        ("PATCH", f"/v1/partner/deployments/{dep}", {"json": {"max_replicas": 3}}),
        ("POST", f"/v1/partner/deployments/{dep}/rollout", {"json": {"version": 1}}),
        ("POST", f"/v1/partner/deployments/{dep}/rollback", {}),
        ("DELETE", f"/v1/partner/deployments/{dep}", {}),
        ("GET", f"/v1/partner/deployments/{dep}/events", {}),
        ("GET", f"/v1/partner/deployments/{dep}/replicas", {}),
        ("GET", f"/v1/partner/deployments/{dep}/logs", {}),
        ("GET", f"/v1/partner/requests/{request_id}/logs", {}),
        ("POST", "/v1/partner/uploads", {"json": {"model": model}}),
        ("GET", f"/v1/partner/uploads/{up}", {}),
        ("HEAD", f"/v1/partner/uploads/{up}", {}),
        ("PATCH", f"/v1/partner/uploads/{up}", {"content": b"0123456789", "headers": {"Upload-Offset": "0"}}),
        ("POST", f"/v1/partner/uploads/{up}/complete", {"json": {"sha256": "0" * 64}}),
        ("DELETE", f"/v1/partner/uploads/{up}", {}),
        ("PATCH", f"/v1/partner/members/{other.members['viewer']}", {"json": {"role": "owner"}}),
        ("DELETE", f"/v1/partner/members/{other.members['viewer']}", {}),
        ("DELETE", f"/v1/partner/keys/{other.key_id}", {}),
    ]


def _portal_calls(other: PartnerOrg, request_id: str) -> list[tuple[str, str, dict]]:
    dep = other.deployment_id
    return [
        ("GET", f"/portal/models/{other.model}", {}),
        ("POST", f"/portal/models/{other.model}/deploy", {"data": {"version": "1", "pool": "shared"}}),
        ("GET", f"/portal/deployments/{dep}", {}),
        ("GET", f"/portal/deployments/{dep}/status", {}),
        ("GET", f"/portal/deployments/{dep}/logs", {}),
        ("POST", f"/portal/deployments/{dep}/scale", {"data": {"min_replicas": "0", "max_replicas": "2",
                                                                   "concurrency": "1", "keep_alive_s": "60"}}),
        ("POST", f"/portal/deployments/{dep}/rollout", {"data": {"version": 1}}),
        ("POST", f"/portal/deployments/{dep}/rollback", {}),
        ("POST", f"/portal/deployments/{dep}/stop", {}),
        ("GET", f"/portal/requests/{request_id}", {}),
        ("GET", f"/portal/deployments/{dep}", {"params": {"request_id": request_id}}),
        ("POST", f"/portal/members/{other.members['viewer']}/role", {"data": {"role": "owner"}}),
        ("POST", f"/portal/members/{other.members['viewer']}/remove", {}),
        ("POST", f"/portal/keys/{other.key_id}/revoke", {}),
    ]


def test_a_partner_gets_404_for_every_id_of_another_partner(app_client: TestClient, world: World) -> None:
    problems = []
    (acme, beta), (alice, bob) = world.partners, world.customers
    served = {acme.slug: alice.request_id, beta.slug: bob.request_id}
    for me, other in ((acme, beta), (beta, acme)):
        assert me.owner is not None
        # What the caller did not send, so a 404 naming it would be a leak.
        markers = (f"{other.slug} private title", other.version_id, f"@{other.slug}.example")
        calls = _partner_calls(other, served[other.slug])
        for who in (me.key, me.owner.headers()):
            problems += _try(app_client, [(m, u, dict(k)) for m, u, k in calls], who, *markers)
        problems += _try(app_client, _portal_calls(other, served[other.slug]), me.owner.headers(), *markers)
    assert problems == [], "\n".join(problems)

    # Nothing of theirs changed.
    for p in world.partners:
        dep = app_client.get(f"/v1/partner/deployments/{p.deployment_id}", headers=p.key).json()
        assert dep["status"] == "active" and dep["max_replicas"] == 1, dep
        keys = {k["id"] for k in app_client.get("/v1/partner/keys", headers=p.key).json()}
        assert p.key_id in keys
        members = {m["id"]: m["role"] for m in app_client.get("/v1/partner/members", headers=p.key).json()}
        assert members[p.members["viewer"]] == "viewer"
        assert app_client.get(f"/v1/partner/uploads/{p.upload_id}", headers=p.key).json()["status"] != "aborted"
        versions = app_client.get(f"/v1/partner/models/{p.model}/versions", headers=p.key).json()
        assert [v["id"] for v in versions] == [p.version_id]


def test_partner_lists_usage_earnings_and_statements_show_only_their_own(app_client: TestClient,
                                                                         world: World) -> None:
    (acme, beta) = world.partners
    for me, other in ((acme, beta), (beta, acme)):
        for path in ("/v1/partner/models", "/v1/partner/deployments", "/v1/partner/uploads", "/v1/partner/usage",
                     f"/v1/partner/earnings?period={world.period}", "/v1/partner/statements",
                     f"/v1/partner/statements/{world.period}", "/v1/partner/members", "/v1/partner/keys"):
            r = app_client.get(path, headers=me.key)
            assert r.status_code == 200, (path, r.text)
            for marker in (other.model, other.deployment_id, other.upload_id, other.key_id,
                           f"@{other.slug}.example", other.members["viewer"]):
                assert marker not in r.text, (path, marker)
        statements = app_client.get(f"/v1/partner/statements/{world.period}", headers=me.key).json()
        assert statements, "the closed period has a statement for each partner"
        for page in ("/portal", "/portal/models", "/portal/deployments", "/portal/deployments/rows",
                     "/portal/usage", "/portal/members", "/portal/earnings", "/portal/keys"):
            assert me.owner is not None
            app_client.cookies.clear()
            r = app_client.get(page, headers=me.owner.headers())
            assert r.status_code == 200, (page, r.status_code)
            for marker in (other.model, other.deployment_id, f"@{other.slug}.example"):
                assert marker not in r.text, (page, marker)

"""Schemathesis over the whole OpenAPI document: every operation (customer, partner, finance,
admin) with the credential it needs, then stateful runs that follow the document's links
(create → read, change, delete what was created). No 5xx, no answer the document does not
describe, no credential ignored.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.security.conftest import admin_headers, finance_key, onboard_partner, open_account

# An open event stream lasts until its request ends, and no worker runs here; the stream is
# tested live in tests/e2e/test_api_live.py.
STREAMS = r"^/v1/requests/\{request_id\}/events$"
# Operations whose schema-valid input may still be refused, and why: what they check cannot be
# said in JSON Schema.
REFUSES_VALID = {
    # A model's inputs follow its own schema (in the catalog), not the generic document.
    ("POST", "/v1/models/{owner}/{model}/requests"),
    # A webhook URL must resolve to a public address.
    ("POST", "/v1/webhooks"), ("PATCH", "/v1/webhooks/{endpoint_id}"),
    # The body must be a valid package archive, read and checked as it streams.
    ("POST", "/v1/partner/models/{model_slug}/versions"),
    # Chunks must start at the upload's offset; completing checks the digest's form (64 hex digits).
    ("PATCH", "/v1/partner/uploads/{upload_id}"), ("POST", "/v1/partner/uploads/{upload_id}/complete"),
    # Periods are checked as `YYYY-MM` by the handlers, not declared as a pattern.
    ("GET", "/v1/partner/earnings"), ("GET", "/v1/partner/statements/{period}"),
    ("GET", "/finance/export/{name}.{fmt}"), ("POST", "/finance/api/periods/{period}/close"),
    # Exactly one of usage_id and request_id; a payee is a partner or a licensor.
    ("POST", "/finance/api/refunds"), ("POST", "/finance/api/payees/{kind}/{ref}/connect"),
    # A deployment's min_replicas may not pass its max_replicas (given or already set).
    ("POST", "/v1/partner/deployments"), ("PATCH", "/v1/partner/deployments/{deployment_id}"),
    # A price card follows its license's rules (a royalty for revenue share, one open-ended tier).
    ("PUT", "/v1/partner/models/{model_slug}/pricing"),
    # Only prepaid accounts top up, by a bounded amount; a dedicated pool needs an account.
    ("POST", "/v1/billing/topups"), ("POST", "/v1/admin/pools"),
    # The generator's regex engine lets `$` match before a final newline; the validator's does not.
    ("POST", "/v1/partner/members"),
}
# Resumable upload chunks are raw bytes (tus' media type).
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
# CI runs a short, fixed campaign; MEDIAGATE_FUZZ_SCALE=20 (say) runs a long one locally.
SCALE = int(os.environ.get("MEDIAGATE_FUZZ_SCALE", "1"))
EXAMPLES_PER_OPERATION = 3 * SCALE
# No shrinking: a failing call is reported as it happened (replays would meet a changed database).
PHASES = (Phase.explicit, Phase.generate)


@dataclass
class Callers:
    partner: dict[str, str]
    customer: dict[str, str]
    finance: dict[str, str]
    owner: str
    model: str

    def headers_for(self, path: str) -> dict[str, str]:
        """The credential the route's family takes."""
        if path.startswith("/v1/partner"):
            return self.partner
        if path.startswith(("/v1/admin", "/finance/api/keys")):
            return admin_headers()
        if path.startswith("/finance"):
            return self.finance
        if path.startswith("/v1/files"):
            return {}
        return self.customer


@pytest.fixture(scope="module")
def callers(app_client: TestClient, flaky_package: bytes, stripe_stand_in: object) -> Callers:
    org = onboard_partner(app_client, "fuzz", flaky_package)
    customer = open_account(app_client, "Fuzz customer")
    # Thousands of calls in a minute: the rate limit is not what is under test here.
    r = app_client.put(f"/v1/admin/accounts/{customer.id}/limits", headers=admin_headers(),
                       json={"rate_per_s": 10_000, "rate_burst": 10_000, "max_concurrency": 1_000})
    assert r.status_code == 200, r.text
    return Callers(org.key, customer.key, finance_key(app_client), org.slug, org.model)


def _schema(app_client: TestClient, callers: Callers):  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app_client.app)
    # Text with NUL is refused at the edge (see the test below), whatever the field's schema says.
    schema.config.generation.update(allow_x00=False)

    # Through schemathesis' own auth hook, so its checks know which credential a call carried
    # (and can leave it out on purpose to see the call refused).
    @schema.auth(refresh_interval=None)
    class Credentials:
        def get(self, case, ctx):  # type: ignore[no-untyped-def]
            return callers.headers_for(case.path)

        def set(self, case, data, ctx):  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), **data}

    return schema.exclude(path_regex=STREAMS)


def _aim(case, callers: Callers) -> None:  # type: ignore[no-untyped-def]
    """Half the time, aim at the real model rather than at random names."""
    params = case.path_parameters or {}
    if "owner" in params and hash(params["owner"]) % 2:
        params.update(owner=callers.owner, model=callers.model)
    if "model_slug" in params and hash(params["model_slug"]) % 2:
        params["model_slug"] = callers.model


def _excluded(method: str, path: str) -> list:  # type: ignore[type-arg]
    return [positive_data_acceptance] if (method.upper(), path) in REFUSES_VALID else []


@pytest.mark.timeout(150 * SCALE)
def test_every_operation_of_the_document_conforms(app_client: TestClient, callers: Callers) -> None:
    operations = [result.ok() for result in _schema(app_client, callers).get_all_operations()]
    assert len(operations) >= 70
    failures: list[str] = []
    for operation in operations:
        excluded = _excluded(operation.method, operation.path)

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=SCALE == 1,
                  phases=PHASES, suppress_health_check=list(HealthCheck))
        def check(case) -> None:  # type: ignore[no-untyped-def]
            _aim(case, callers)
            case.call_and_validate(excluded_checks=excluded)  # noqa: B023

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - all operations' failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.timeout(150 * SCALE)
def test_stateful_runs_follow_the_documents_links(app_client: TestClient, callers: Callers) -> None:
    schema = _schema(app_client, callers)
    doc = app_client.get("/openapi.json").json()
    links = [name for ops in doc["paths"].values() for op in ops.values()
             for response in op["responses"].values() for name in response.get("links", {})]
    assert len(links) >= 30, links

    failures: dict[str, str] = {}
    calls: list[str] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case):  # type: ignore[no-untyped-def]
            _aim(case, callers)

        def step(self, input):  # type: ignore[no-untyped-def]
            try:
                return super().step(input)
            except Exception as exc:  # the app raised (a 500 in production), or a link broke
                case = input.case
                failures.setdefault(f"{case.method.upper()} {case.path}", "".join(traceback.format_exception(exc)))
                raise

        def validate_response(self, response, case, additional_checks=None, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(f"{case.method.upper()} {case.path} -> {response.status_code}")
            try:
                case.validate_response(response, excluded_checks=_excluded(case.method, case.path),
                                       transport_kwargs=kwargs or None)
            except (AssertionError, BaseExceptionGroup) as exc:
                # Collected, not raised: a replay against a database the first run changed would
                # take another path, and Hypothesis would report that instead of the failure.
                failures.setdefault(f"{case.method.upper()} {case.path}", str(exc))

    try:
        Workflow.run(settings=settings(max_examples=25 * SCALE, stateful_step_count=6, deadline=None, database=None,
                                       derandomize=SCALE == 1, phases=PHASES,
                                       suppress_health_check=list(HealthCheck)))
    except FlakyStrategyDefinition:
        # The same choices met a database an earlier scenario had changed, and took another
        # path: the campaign ends there. What it found until then is reported below.
        assert len(calls) >= 50, calls
    finally:
        assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
    followed = [c for c in calls if "{" in c and " -> 2" in c]  # an id from an earlier answer was used
    assert followed, calls
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())


def test_nul_characters_are_refused_at_the_edge(app_client: TestClient, callers: Callers) -> None:
    """What the fuzz found: PostgreSQL cannot store NUL, so text carrying one must be a 422,
    never a 500 from the first query that meets it."""
    partner, customer = callers.partner, callers.customer
    refused = [
        app_client.post("/v1/partner/models", headers=partner, json={"slug": "a\x00b"}),
        app_client.post("/v1/admin/accounts", headers=admin_headers(), json={"name": "x\x00"}),
        app_client.post(f"/v1/models/{callers.owner}/{callers.model}/requests", headers=customer,
                        json={"input": {"mode": "ok\x00"}}),
        app_client.get("/v1/partner/usage", headers=partner, params={"model": "a\x00"}),
        app_client.get("/v1/partner/models/a%00b", headers=partner),
        app_client.post("/portal/login", data={"email": "a\x00@b.c", "password": "x"}),
    ]
    for r in refused:
        assert r.status_code == 422, (r.request.url, r.status_code, r.text)
        assert "NUL" in r.text
    # A backslash followed by the text `u0000` is no NUL.
    r = app_client.post("/v1/partner/keys", headers=partner, json={"name": "ci \\u0000 key"})
    assert r.status_code == 201 and r.json()["name"] == "ci \\u0000 key", r.text


def test_numbers_and_names_past_what_the_database_holds_are_refused(app_client: TestClient, callers: Callers) -> None:
    """What the fuzz found: a number or name too big for its column must be a 422, not a 500."""
    partner, huge = callers.partner, 2**64
    deployment = app_client.get("/v1/partner/deployments", headers=partner).json()[0]["id"]
    account = app_client.post("/v1/admin/accounts", headers=admin_headers(), json={"name": "Big"}).json()["id"]
    refused = [
        app_client.get(f"/v1/partner/deployments/{deployment}/logs", headers=partner, params={"after": huge}),
        app_client.get("/v1/partner/requests/req_x/logs", headers=partner, params={"after": huge}),
        app_client.post("/v1/partner/deployments", headers=partner, json={"model": callers.model, "version": huge}),
        app_client.post(f"/v1/partner/deployments/{deployment}/rollout", headers=partner, json={"version": huge}),
        app_client.post("/v1/partner/uploads", headers=partner, json={"model": callers.model, "size": huge}),
        app_client.put(f"/v1/partner/models/{callers.model}/pricing", headers=partner,
                       json={"tier": "open", "unit": "images", "unit_price_micros": huge}),
        app_client.put(f"/v1/partner/models/{callers.model}/pricing", headers=partner,
                       json={"tier": "open", "unit": "images", "unit_price_micros": 1, "version": huge}),
        app_client.post("/v1/admin/pools", headers=admin_headers(), json={"name": "big", "p95_queue_ms_target": huge}),
        app_client.post(f"/finance/api/accounts/{account}/pool-contracts", headers=callers.finance,
                        json={"pool": "gold", "monthly_fee_micros": huge, "latency_target_ms": 100}),
        app_client.post(f"/finance/api/accounts/{account}/pool-contracts", headers=callers.finance,
                        json={"pool": "gold", "monthly_fee_micros": 1, "latency_target_ms": huge}),
        app_client.put(f"/v1/partner/models/{callers.model}/pricing", headers=partner,
                       json={"tier": "revenue_share", "unit": "images", "unit_price_micros": 1, "royalty_bps": 1,
                             "included_units": 1e15}),
        app_client.put(f"/finance/api/licensors/{'l' * 65}", headers=callers.finance, json={}),
        app_client.post(f"/finance/api/payees/licensor/{'l' * 65}/connect", headers=callers.finance, json={}),
    ]
    assert [r.status_code for r in refused] == [422] * len(refused), [(r.request.url.path, r.text) for r in refused]

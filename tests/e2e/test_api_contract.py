# ruff: noqa: F811 - fixtures are redefined as arguments
"""The OpenAPI document is complete and true: schemathesis finds no 5xx and no schema
violations on the customer API; bad input gets problem+json (404 for others' ids, 413)."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.e2e.api_support import STEPPER_PRICING
from tests.e2e.conftest import ADMIN, World
from tests.support import FIXTURE_MODELS

CUSTOMER_PATHS = r"^/v1/(models|requests|webhooks|account|pools|usage|files)"


@pytest.fixture
def world(api: TestClient, tmp_path) -> World:  # type: ignore[no-untyped-def]
    return World(api, tmp_path, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)


def test_customer_api_conforms_to_its_openapi_document(api: TestClient, world: World) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app).include(path_regex=CUSTOMER_PATHS)
    schema.config.generation.update(allow_x00=False)  # text with NUL is refused at the edge (422)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:
        # A model's inputs follow its own schema (in the catalog), not the generic document:
        # a schema-valid body may rightly get 422 from the submit call.
        submit = operation.method.upper() == "POST" and "owner" in operation.path
        excluded = [positive_data_acceptance] if submit else []

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:  # type: ignore[no-untyped-def]
            if "owner" in (case.path_parameters or {}):  # aim at the real model, not only at random names
                case.path_parameters.update(owner="acme", model="stepper")
            case.call_and_validate(headers=world.customer, excluded_checks=excluded)  # noqa: B023

        check()


def test_document_describes_errors_as_problems_and_the_limit_headers(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    submit = doc["paths"]["/v1/models/{owner}/{model}/requests"]["post"]
    for code in ("401", "404", "409", "413", "422", "429"):
        assert submit["responses"][code]["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"}
    assert "Retry-After" in submit["responses"]["429"]["headers"]
    assert "RateLimit-Remaining" in submit["responses"]["201"]["headers"]
    names = {p["name"].lower() for p in submit["parameters"]}
    assert {"idempotency-key", "prefer", "request-timeout", "priority"} <= names
    assert "CustomerKey" in doc["components"]["securitySchemes"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    events = doc["paths"]["/v1/requests/{request_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    # Every call may meet the database away, and says when to come back.
    for operations in doc["paths"].values():
        for operation in operations.values():
            unavailable = operation["responses"]["503"]
            assert "application/problem+json" in unavailable["content"]
            assert "Retry-After" in unavailable["headers"]


def test_bad_input_unknown_and_foreign_ids_and_oversized_bodies(api: TestClient, world: World) -> None:
    w = world
    mine = api.post(f"/v1/models/{w.model}/requests", headers=w.customer, json={"input": {"steps": 1}}).json()
    other = {"Authorization": f"Key {api.post('/v1/admin/accounts', json={'name': 'O'}, headers=ADMIN).json()['api_key']}"}
    for method, path in (("GET", "/v1/requests/{}"), ("POST", "/v1/requests/{}/cancel"),
                         ("GET", "/v1/requests/{}/events"), ("GET", "/v1/requests/{}/webhooks")):
        for who, rid in ((other, mine["id"]), (w.customer, "req_01unknown0000000000000000")):
            r = api.request(method, path.format(rid), headers=who)
            assert r.status_code == 404, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"].endswith("/not-found")

    big = {"input": {"prompt": "x" * (1024 * 1024 + 10)}}
    r = api.post(f"/v1/models/{w.model}/requests", headers=w.customer, json=big)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 32 * 1024

    r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Content-Type": "application/json"},
                 content=chunks())
    assert r.status_code == 413

    r = api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                 json={"input": {}, "webhook": "http://example.com/hook", "webhook_events": ["nonsense"]})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Priority": "urgent"},
                 json={"input": {}})
    assert r.status_code == 422
    r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Request-Timeout": "-1"},
                 json={"input": {}})
    assert r.status_code == 422

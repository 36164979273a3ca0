"""The OpenAPI document, made to say what the API does: problem+json errors, limit headers,
who may call what, and how one answer leads to the next call.

FastAPI documents error bodies as `application/json` and validation errors in its own
shape; every error here is an RFC 9457 `application/problem+json` body, so the document is
rewritten once when first asked for. Clients generated from it get the right types. The
partner, finance and admin routes read their credentials themselves, so their security schemes
and error answers are added here; OpenAPI links name the calls a created resource's id feeds.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.schemas import Problem

PROBLEM_REF = "#/components/schemas/Problem"
REASONS = {
    400: "The body could not be read (not UTF-8, or cut short)", 401: "No valid API key", 403: "The key lacks a scope, or the account is suspended",
    402: "Prepaid credit would not cover it", 404: "Not found (also another account's resource)",
    409: "Conflict (Idempotency-Key reused with another body, or the resource's state forbids it)",
    413: "The request body is too large", 422: "Invalid request or input (`field` names it)",
    429: "Rate limit reached: see `Retry-After` and the `RateLimit-*` headers",
    503: "A service the call needs (Stripe, the database) is unavailable: retry later",
}
CUSTOMER_PREFIXES = ("/v1/models", "/v1/requests", "/v1/webhooks", "/v1/account", "/v1/pools", "/v1/usage")
# Route families that authenticate themselves: their schemes, and the errors they answer with.
FAMILIES: tuple[tuple[str, list[dict[str, list[str]]], tuple[int, ...]], ...] = (
    ("/v1/partner/", [{"PartnerKey": []}, {"PortalSession": []}], (400, 401, 403, 404, 409, 413, 422)),
    ("/finance/api/keys", [{"AdminKey": []}], (401, 422)),
    ("/finance/", [{"FinanceKey": []}], (400, 401, 404, 409, 422, 503)),
    ("/v1/admin/", [{"AdminKey": []}], (401, 404, 409, 422)),
    ("/v1/billing/", [{"CustomerKey": []}], (401, 402, 403, 409, 422, 429, 503)),
)
SCHEMES = {
    "PartnerKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                   "description": "`Bearer mgp_…`: a partner API key"},
    "PortalSession": {"type": "apiKey", "in": "cookie", "name": "mg_portal",
                      "description": "A portal member's session; state-changing calls also send `X-CSRF-Token`"},
    "FinanceKey": {"type": "apiKey", "in": "header", "name": "Authorization",
                   "description": "`Key <finance key>` (or the operators' admin key)"},
}
# (method, path, status) of a call that creates something → the calls its answer's id feeds.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/models/{owner}/{model}/requests", "201"): {
        "GetRequest": ("get", "/v1/requests/{request_id}", {"request_id": "$response.body#/id"}),
        "CancelRequest": ("post", "/v1/requests/{request_id}/cancel", {"request_id": "$response.body#/id"}),
        "RequestEvents": ("get", "/v1/requests/{request_id}/events", {"request_id": "$response.body#/id"}),
        "RequestWebhooks": ("get", "/v1/requests/{request_id}/webhooks", {"request_id": "$response.body#/id"}),
    },
    ("post", "/v1/webhooks", "201"): {
        "GetEndpoint": ("get", "/v1/webhooks/{endpoint_id}", {"endpoint_id": "$response.body#/id"}),
        "UpdateEndpoint": ("patch", "/v1/webhooks/{endpoint_id}", {"endpoint_id": "$response.body#/id"}),
        "DeleteEndpoint": ("delete", "/v1/webhooks/{endpoint_id}", {"endpoint_id": "$response.body#/id"}),
    },
    ("post", "/v1/partner/models", "201"): {
        "GetModel": ("get", "/v1/partner/models/{model_slug}", {"model_slug": "$response.body#/slug"}),
        "ListVersions": ("get", "/v1/partner/models/{model_slug}/versions", {"model_slug": "$response.body#/slug"}),
        "UploadVersion": ("post", "/v1/partner/models/{model_slug}/versions", {"model_slug": "$response.body#/slug"}),
        "SetPricing": ("put", "/v1/partner/models/{model_slug}/pricing", {"model_slug": "$response.body#/slug"}),
    },
    **{("post", path, code): {
        "GetDeployment": ("get", "/v1/partner/deployments/{deployment_id}", {"deployment_id": "$response.body#/id"}),
        "UpdateDeployment": ("patch", "/v1/partner/deployments/{deployment_id}",
                             {"deployment_id": "$response.body#/id"}),
        "Rollout": ("post", "/v1/partner/deployments/{deployment_id}/rollout", {"deployment_id": "$response.body#/id"}),
        "Rollback": ("post", "/v1/partner/deployments/{deployment_id}/rollback",
                     {"deployment_id": "$response.body#/id"}),
        "StopDeployment": ("delete", "/v1/partner/deployments/{deployment_id}", {"deployment_id": "$response.body#/id"}),
        "DeploymentEvents": ("get", "/v1/partner/deployments/{deployment_id}/events",
                             {"deployment_id": "$response.body#/id"}),
        "DeploymentReplicas": ("get", "/v1/partner/deployments/{deployment_id}/replicas",
                               {"deployment_id": "$response.body#/id"}),
        "DeploymentLogs": ("get", "/v1/partner/deployments/{deployment_id}/logs",
                           {"deployment_id": "$response.body#/id"}),
    } for path, code in (("/v1/partner/deployments", "201"), ("/v1/partner/deployments/{deployment_id}/rollout", "201"))},
    ("post", "/v1/partner/uploads", "201"): {
        "GetUpload": ("get", "/v1/partner/uploads/{upload_id}", {"upload_id": "$response.body#/id"}),
        "UploadOffset": ("head", "/v1/partner/uploads/{upload_id}", {"upload_id": "$response.body#/id"}),
        "UploadChunk": ("patch", "/v1/partner/uploads/{upload_id}", {"upload_id": "$response.body#/id"}),
        "CompleteUpload": ("post", "/v1/partner/uploads/{upload_id}/complete", {"upload_id": "$response.body#/id"}),
        "AbortUpload": ("delete", "/v1/partner/uploads/{upload_id}", {"upload_id": "$response.body#/id"}),
    },
    ("post", "/v1/partner/members", "201"): {
        "UpdateMember": ("patch", "/v1/partner/members/{member_id}", {"member_id": "$response.body#/id"}),
        "RemoveMember": ("delete", "/v1/partner/members/{member_id}", {"member_id": "$response.body#/id"}),
    },
    ("post", "/v1/partner/keys", "201"): {
        "RevokeKey": ("delete", "/v1/partner/keys/{key_id}", {"key_id": "$response.body#/id"}),
    },
    ("post", "/v1/admin/accounts", "201"): {
        "SetLimits": ("put", "/v1/admin/accounts/{account_id}/limits", {"account_id": "$response.body#/id"}),
        "AccountPrice": ("post", "/finance/api/accounts/{account_id}/prices", {"account_id": "$response.body#/id"}),
        "PoolContract": ("post", "/finance/api/accounts/{account_id}/pool-contracts",
                         {"account_id": "$response.body#/id"}),
    },
    ("post", "/v1/admin/pools", "201"): {
        "PoolStats": ("get", "/v1/pools/{name}/stats", {"name": "$response.body#/name"}),
    },
}
RATE_HEADERS = {
    "RateLimit-Limit": "Requests the key may burst",
    "RateLimit-Remaining": "Requests left in the current budget",
    "RateLimit-Reset": "Seconds until the budget is full again",
    "RateLimit-Policy": "The policy: `<burst>;w=<seconds to refill>`",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for problem+json errors with these status codes."""
    return {code: {"model": Problem, "description": REASONS.get(code, "Error")} for code in codes}


def _authenticate(path: str, operation: dict[str, Any]) -> None:
    """Security and error answers for the routes that read their credentials themselves."""
    for prefix, security, codes in FAMILIES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            operation["security"] = security
            # The credential is the scheme's, not an ordinary parameter.
            operation["parameters"] = [p for p in operation.get("parameters", []) if not (
                (p["in"] == "header" and p["name"].lower() == "authorization")
                or (p["in"] == "cookie" and p["name"] == "mg_portal"))]
            if not operation["parameters"]:
                del operation["parameters"]
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(str(code), {"description": REASONS.get(code, "Error"),
                                                 "content": {"application/json": {"schema": {"$ref": PROBLEM_REF}}}})
            return


def _link(schema: dict[str, Any]) -> None:
    paths = schema.get("paths", {})
    for (method, path, code), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(code)
        if response is None:
            continue
        for name, (target_method, target_path, parameters) in links.items():
            target = paths.get(target_path, {}).get(target_method)
            if target is not None:
                response.setdefault("links", {})[name] = {"operationId": target["operationId"],
                                                          "parameters": parameters}


def _fix(schema: dict[str, Any]) -> dict[str, Any]:
    schema.setdefault("components", {}).setdefault("schemas", {})
    schema["components"].setdefault("securitySchemes", {}).update(SCHEMES)
    for path, operations in schema.get("paths", {}).items():
        customer = path.startswith(CUSTOMER_PREFIXES)
        for method, operation in operations.items():
            _authenticate(path, operation)
            if method == "head":  # answers to HEAD have headers only
                for code, response in operation.get("responses", {}).items():
                    if code.startswith("2"):
                        response.pop("content", None)
            # Any call can meet the database away (kit.errors answers 503 database-unavailable).
            unavailable = operation.setdefault("responses", {}).setdefault("503", {
                "description": REASONS[503], "content": {"application/json": {"schema": {"$ref": PROBLEM_REF}}}})
            unavailable.setdefault("headers", {})["Retry-After"] = {
                "description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
            if "requestBody" in operation:  # a body that is not UTF-8 cannot even be parsed
                operation["responses"].setdefault("400", {
                    "description": REASONS[400], "content": {"application/json": {"schema": {"$ref": PROBLEM_REF}}}})
            for parameter in operation.get("parameters", []):
                # A header or query value is a string or absent, never JSON null.
                options = parameter.get("schema", {}).get("anyOf")
                if options and {"type": "null"} in options and len(options) == 2:
                    (kept,) = [o for o in options if o != {"type": "null"}]
                    parameter["schema"] = {**{k: v for k, v in parameter["schema"].items() if k != "anyOf"}, **kept}
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {"description": REASONS[422],
                                    "content": {"application/json": {"schema": {"$ref": PROBLEM_REF}}}}
            for code, response in responses.items():
                content = response.get("content", {})
                if code[0] in "45" and "application/json" in content:
                    response["content"] = {"application/problem+json": content.pop("application/json")}
                if customer and code != "413":
                    headers = response.setdefault("headers", {})
                    for name, text in RATE_HEADERS.items():
                        headers[name] = {"description": text,
                                         "schema": {"type": "string" if name == "RateLimit-Policy" else "integer"}}
                    if code == "429":
                        headers["Retry-After"] = {"description": "Seconds to wait before trying again",
                                                  "schema": {"type": "integer"}}
    components = schema["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    _link(schema)
    return schema


def install(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _fix(get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=app.description,
                routes=app.routes, tags=app.openapi_tags, servers=app.servers))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

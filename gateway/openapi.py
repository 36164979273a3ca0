"""The OpenAPI document, made to say what the API does: problem+json errors, limit headers.

FastAPI documents error bodies as `application/json` and validation errors in its own
shape; every error here is an RFC 9457 `application/problem+json` body, so the document is
rewritten once when first asked for. Clients generated from it get the right types.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.schemas import Problem

PROBLEM_REF = "#/components/schemas/Problem"
REASONS = {
    400: "Bad request", 401: "No valid API key", 403: "The key lacks a scope, or the account is suspended",
    404: "Not found (also another account's resource)", 409: "Conflict (Idempotency-Key reused with another body)",
    413: "The request body is too large", 422: "Invalid request or input (`field` names it)",
    429: "Rate limit reached: see `Retry-After` and the `RateLimit-*` headers",
}
CUSTOMER_PREFIXES = ("/v1/models", "/v1/requests", "/v1/webhooks", "/v1/account", "/v1/pools", "/v1/usage")
RATE_HEADERS = {
    "RateLimit-Limit": "Requests the key may burst",
    "RateLimit-Remaining": "Requests left in the current budget",
    "RateLimit-Reset": "Seconds until the budget is full again",
    "RateLimit-Policy": "The policy: `<burst>;w=<seconds to refill>`",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for problem+json errors with these status codes."""
    return {code: {"model": Problem, "description": REASONS.get(code, "Error")} for code in codes}


def _fix(schema: dict[str, Any]) -> dict[str, Any]:
    schema.setdefault("components", {}).setdefault("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        customer = path.startswith(CUSTOMER_PREFIXES)
        for operation in operations.values():
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

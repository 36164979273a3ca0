"""Every route of the app and the credential it needs.

A route missing here fails the sweep: whoever adds a route says who may call it. The kinds:

- customer:read / customer:write — a customer key (`Authorization: Key …`) with that scope
- partner:read — a partner key or any portal member's session (CSRF token on writes)
- partner:write — a partner key or a session of a developer or above
- partner:admin — a partner key or a session of an admin or owner
- portal / portal:developer / portal:admin — the portal session cookie, by role (pages)
- finance:api / finance:page — a finance key or the operators' key, or the finance session
- admin — the operators' admin key
- signed-url — the HMAC-signed query of a file link, no key
- stripe-signature — the `Stripe-Signature` header over the body, no key
- invite-token — the single-use token in the path, no key
- public — nothing: health, the API documents, sign-in forms and static files only
"""

from __future__ import annotations

PUBLIC = {
    # The explicit allow-list of routes anyone may call.
    "GET /healthz": "health check",
    "GET /openapi.json": "API document",
    "GET /docs": "API document",
    "GET /docs/oauth2-redirect": "API document",
    "GET /redoc": "API document",
    "GET /portal/static/{name}": "the portal's script, stylesheet and htmx",
    "GET /portal/login": "sign-in form",
    "POST /portal/login": "sign-in (password + double-submit token)",
    "GET /finance/login": "sign-in form",
    "POST /finance/login": "sign-in (the finance key is the credential)",
    "POST /finance/logout": "only clears the finance cookie",
    "GET /portal/{rest:path}": "HTML 404 for unknown portal paths",
    "POST /portal/{rest:path}": "HTML 404 for unknown portal paths",
}

ROUTES: dict[str, str] = {
    **dict.fromkeys(PUBLIC, "public"),
    # customer API
    "POST /v1/models/{owner}/{model}/requests": "customer:write",
    "GET /v1/requests/{request_id}": "customer:read",
    "POST /v1/requests/{request_id}/cancel": "customer:write",
    "GET /v1/requests/{request_id}/events": "customer:read",
    "GET /v1/requests/{request_id}/webhooks": "customer:read",
    "GET /v1/files/{file_id}": "signed-url",
    "GET /v1/models": "customer:read",
    "GET /v1/models/{owner}/{model}": "customer:read",
    "GET /v1/usage": "customer:read",
    "POST /v1/webhooks": "customer:write",
    "GET /v1/webhooks": "customer:read",
    "GET /v1/webhooks/secret": "customer:write",
    "POST /v1/webhooks/secret/rotate": "customer:write",
    "GET /v1/webhooks/{endpoint_id}": "customer:read",
    "PATCH /v1/webhooks/{endpoint_id}": "customer:write",
    "DELETE /v1/webhooks/{endpoint_id}": "customer:write",
    "GET /v1/account": "customer:read",
    "PATCH /v1/account": "customer:write",
    "GET /v1/pools/{name}/stats": "customer:read",
    "POST /v1/billing/topups": "customer:write",
    "GET /v1/billing/balance": "customer:write",
    "GET /v1/billing/invoices": "customer:write",
    # partner API
    "POST /v1/partner/models": "partner:write",
    "GET /v1/partner/models": "partner:read",
    "POST /v1/partner/models/{model_slug}/versions": "partner:write",
    "GET /v1/partner/models/{model_slug}/versions": "partner:read",
    "GET /v1/partner/models/{model_slug}": "partner:read",
    "PUT /v1/partner/models/{model_slug}/pricing": "partner:write",
    "POST /v1/partner/deployments": "partner:write",
    "GET /v1/partner/deployments": "partner:read",
    "GET /v1/partner/deployments/{deployment_id}": "partner:read",
    "PATCH /v1/partner/deployments/{deployment_id}": "partner:write",
    "POST /v1/partner/deployments/{deployment_id}/rollout": "partner:write",
    "POST /v1/partner/deployments/{deployment_id}/rollback": "partner:write",
    "DELETE /v1/partner/deployments/{deployment_id}": "partner:write",
    "GET /v1/partner/deployments/{deployment_id}/events": "partner:read",
    "GET /v1/partner/deployments/{deployment_id}/replicas": "partner:read",
    "GET /v1/partner/deployments/{deployment_id}/logs": "partner:read",
    "GET /v1/partner/requests/{request_id}/logs": "partner:read",
    "GET /v1/partner/usage": "partner:read",
    "GET /v1/partner/earnings": "partner:read",
    "GET /v1/partner/statements": "partner:read",
    "GET /v1/partner/statements/{period}": "partner:read",
    "POST /v1/partner/uploads": "partner:write",
    "GET /v1/partner/uploads": "partner:read",
    "GET /v1/partner/uploads/{upload_id}": "partner:read",
    "HEAD /v1/partner/uploads/{upload_id}": "partner:read",
    "PATCH /v1/partner/uploads/{upload_id}": "partner:write",
    "POST /v1/partner/uploads/{upload_id}/complete": "partner:write",
    "DELETE /v1/partner/uploads/{upload_id}": "partner:write",
    "GET /v1/partner/members": "partner:read",
    "POST /v1/partner/members": "partner:admin",
    "PATCH /v1/partner/members/{member_id}": "partner:admin",
    "DELETE /v1/partner/members/{member_id}": "partner:admin",
    "GET /v1/partner/keys": "partner:admin",
    "POST /v1/partner/keys": "partner:admin",
    "DELETE /v1/partner/keys/{key_id}": "partner:admin",
    # partner portal pages
    "POST /portal/logout": "portal",
    "GET /portal/invite/{token}": "invite-token",
    "POST /portal/invite/{token}": "invite-token",
    "GET /portal": "portal",
    "GET /portal/models": "portal",
    "POST /portal/models": "portal:developer",
    "GET /portal/models/{slug}": "portal",
    "POST /portal/models/{slug}/deploy": "portal:developer",
    "GET /portal/usage": "portal",
    "GET /portal/earnings": "portal",
    "GET /portal/members": "portal",
    "POST /portal/members": "portal:admin",
    "POST /portal/members/{member_id}/role": "portal:admin",
    "POST /portal/members/{member_id}/remove": "portal:admin",
    "GET /portal/keys": "portal:admin",
    "POST /portal/keys": "portal:admin",
    "POST /portal/keys/{key_id}/revoke": "portal:admin",
    "GET /portal/account": "portal",
    "POST /portal/account/password": "portal",
    "GET /portal/deployments": "portal",
    "GET /portal/deployments/rows": "portal",
    "GET /portal/deployments/{deployment_id}": "portal",
    "GET /portal/deployments/{deployment_id}/status": "portal",
    "GET /portal/deployments/{deployment_id}/logs": "portal",
    "POST /portal/deployments/{deployment_id}/scale": "portal:developer",
    "POST /portal/deployments/{deployment_id}/rollout": "portal:developer",
    "POST /portal/deployments/{deployment_id}/rollback": "portal:developer",
    "POST /portal/deployments/{deployment_id}/stop": "portal:developer",
    "GET /portal/requests": "portal",
    "GET /portal/requests/{request_id}": "portal",
    # finance
    "GET /finance": "finance:page",
    "GET /finance/revenue-share": "finance:page",
    "GET /finance/reconciliation": "finance:page",
    "GET /finance/periods": "finance:page",
    "GET /finance/charts/revenue.svg": "finance:api",
    "GET /finance/charts/split.svg": "finance:api",
    "GET /finance/export/{name}.{fmt}": "finance:api",
    "POST /finance/api/keys": "admin",
    "POST /finance/api/refunds": "finance:api",
    "PUT /finance/api/licensors/{slug}": "finance:api",
    "POST /finance/api/payees/{kind}/{ref}/connect": "finance:api",
    "POST /finance/api/accounts/{account_id}/prices": "finance:api",
    "POST /finance/api/accounts/{account_id}/pool-contracts": "finance:api",
    "POST /finance/api/periods/{period}/close": "finance:api",
    # operators
    "POST /v1/admin/partners": "admin",
    "POST /v1/admin/accounts": "admin",
    "POST /v1/admin/pools": "admin",
    "GET /v1/admin/pools": "admin",
    "PUT /v1/admin/accounts/{account_id}/limits": "admin",
    # Stripe's own calls
    "POST /v1/stripe/webhooks": "stripe-signature",
}

# Credentials by name, and which kinds accept each. A session without its CSRF token is
# accepted only where the method is safe; the sweep works that out from the method.
ACCEPTS: dict[str, set[str]] = {
    "customer": {"customer:read", "customer:write"},
    "customer-read-only": {"customer:read"},
    "partner-key": {"partner:read", "partner:write", "partner:admin"},
    "owner-session": {"partner:read", "partner:write", "partner:admin", "portal", "portal:developer",
                      "portal:admin"},
    "owner-session-without-csrf": {"partner:read", "partner:write", "partner:admin", "portal",
                                   "portal:developer", "portal:admin"},
    "viewer-session": {"partner:read", "portal"},
    "finance-key": {"finance:api", "finance:page"},
    "admin-key": {"admin", "finance:api", "finance:page"},
}

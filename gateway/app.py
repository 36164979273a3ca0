"""create_app(): the composition root that mounts every router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from billing.endpoints import customer_router as billing_customer_router
from billing.endpoints import router as billing_router
from billing.portal_pages import router as portal_router
from gateway import limits, openapi
from gateway.account_endpoints import router as account_router
from gateway.admin import router as admin_router
from gateway.auth import account_writer
from gateway.endpoints import router as customer_router
from gateway.headers import SecurityHeaders
from gateway.nul_guard import RejectNul
from kit.db import assert_migrated
from kit.settings import get_settings
from kit.telemetry import setup_tracing, tracing_configured
from kit.web import install_error_handlers
from partners.endpoints import router as partner_router


def create_app(*, check_schema: bool = True) -> FastAPI:
    """The mediagate API: customer, partner and admin routers."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        setup_tracing("mediagate-api")
        if check_schema:
            assert_migrated()
        yield

    # FastAPI opens each request's server span itself. Told up front whether tracing is on (our
    # settings export spans, or a tracer provider is installed before the app is built), it
    # does not look for a configured provider on every request.
    tracing = get_settings().telemetry_exporter != "none" or tracing_configured()
    app = FastAPI(
        title="mediagate",
        version="0.1.0",
        summary="Hosting gateway for generative-media models",
        lifespan=lifespan,
        telemetry={"tracing": tracing, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    for router in (customer_router, account_router, partner_router, billing_router, admin_router):
        app.include_router(router)
    app.include_router(portal_router)
    app.include_router(billing_customer_router(account_writer))
    app.add_middleware(limits.CustomerEdges)
    app.add_middleware(RejectNul)
    app.add_middleware(SecurityHeaders)  # outermost: 413s and 429s get the headers too
    openapi.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app

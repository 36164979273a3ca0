"""Billing fixtures: Stripe (localstripe + the stand-in) and the app served over HTTP."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.stripe_connect.processes import StripeProcesses, free_port


@pytest.fixture(scope="session")
def stripe_fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeProcesses]:
    """localstripe and the Connect/invoicing stand-in, with the SDK pointed at them."""
    from billing.settings import get_billing_settings
    from billing.stripe_gateway import get_gateway

    procs = StripeProcesses(tmp_path_factory.mktemp("stripe"))
    saved = {k: os.environ.get(k) for k in ("MEDIAGATE_STRIPE_API_BASE", "MEDIAGATE_STRIPE_TIMEOUT_S")}
    os.environ["MEDIAGATE_STRIPE_API_BASE"] = procs.api_base
    # Short, so a held answer times out quickly and the SDK retries with the same key.
    os.environ["MEDIAGATE_STRIPE_TIMEOUT_S"] = "1.5"
    get_billing_settings.cache_clear()
    get_gateway.cache_clear()
    yield procs
    procs.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_billing_settings.cache_clear()
    get_gateway.cache_clear()


class LiveApp:
    def __init__(self, base: str) -> None:
        self.base = base


@pytest.fixture
def served_app(committed) -> Iterator[LiveApp]:  # type: ignore[no-untyped-def]
    """The whole API on a loopback port (a real HTTP server in a thread)."""
    import uvicorn

    from gateway.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(check_schema=False), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    yield LiveApp(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def live_app(served_app: LiveApp, stripe_fakes: StripeProcesses) -> LiveApp:
    """The served API, registered as Stripe's webhook endpoint."""
    from billing.settings import get_billing_settings

    stripe_fakes.add_webhook("mediagate", f"{served_app.base}/v1/stripe/webhooks",
                             get_billing_settings().stripe_webhook_secret)
    return served_app


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy (webhooks arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json"

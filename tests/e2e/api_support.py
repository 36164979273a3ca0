"""Helpers for the customer API's end-to-end tests: a worker with short timings, live API
processes over real HTTP, a webhook receiver, and waiting on requests.

Imported by `tests/e2e/test_api_*.py`; the fixtures here are module-scoped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from tests.support import ROOT, WorkerProcess, wait_healthy

# The test process's own app (TestClient) accepts webhooks to this machine.
os.environ["MEDIAGATE_GATEWAY_WEBHOOK_ALLOW_PRIVATE"] = "1"

# Short timings so retries, deadlines and hung models play out in seconds.
WORKER_ENV = {
    "MEDIAGATE_GATEWAY_WEBHOOK_ALLOW_PRIVATE": "1",
    "MEDIAGATE_GATEWAY_WEBHOOK_BACKOFF_SCALE": "0.0001",  # 5 s, 5 min, 30 min, 2 h, 5 h → 2.7 s in all
    "MEDIAGATE_GATEWAY_SWEEP_INTERVAL_S": "0.2",
    "MEDIAGATE_GATEWAY_REQUEUE_DELAY_S": "0.1",
    "MEDIAGATE_RUNNER_PREDICT_TIMEOUT_S": "6",
}
STEPPER_PRICING = {"tier": "open", "unit": "requests", "unit_price_micros": 1_000}
FLAKY_PRICING = {"tier": "revenue_share", "unit": "images", "unit_price_micros": 40_000,
                 "licensor": "bfl", "royalty_bps": 2_500}


def _flush_redis() -> None:
    import redis

    from kit.settings import get_settings

    redis.Redis.from_url(get_settings().redis_url).flushdb()


@pytest.fixture(scope="module")
def gw_worker(engine: Engine) -> Iterator[WorkerProcess]:
    """A real Celery worker on the shared and gold pools, 3 threads, short timings."""
    from gateway.config import get_gateway_settings

    get_gateway_settings.cache_clear()
    _flush_redis()
    proc = WorkerProcess(pools="shared,gold", concurrency=3, env=WORKER_ENV)
    yield proc
    proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveAPI:
    """`uvicorn gateway.app:create_app` in its own process, reached over real HTTP."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("MEDIAGATE_DATA_DIR", "/tmp")) / f"api-{self.port}.log"
        self._file = open(self.log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory", "--port", str(self.port),
             "--log-level", "warning"], cwd=ROOT, env={**os.environ, **WORKER_ENV, **(env or {})},
            stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(self.url, self.process, self.log)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self._file.close()


@pytest.fixture(scope="module")
def live_api(engine: Engine) -> Iterator[LiveAPI]:
    api = LiveAPI()
    yield api
    api.stop()


@pytest.fixture
def live(live_api: LiveAPI, committed: Engine) -> Iterator[httpx.Client]:
    with live_api.client() as client:
        yield client


def wait_for(api: Any, headers: dict, request_id: str, statuses: tuple[str, ...] = (
        "succeeded", "failed", "canceled", "expired", "blocked"), timeout: float = 30) -> dict:
    """Poll a request until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/v1/requests/{request_id}", headers=headers).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


class Receiver:
    """A webhook endpoint on this machine: answers `script` status codes in turn, then 204."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.calls.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                           "body": body, "path": self.path, "at": time.monotonic()})
                    code = receiver.script.pop(0) if receiver.script else 204
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(c["body"]) for c in self.calls if path is None or c["path"] == path]

    def wait(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} of {count} webhook calls arrived"
            time.sleep(0.05)
        return self.calls

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse_events(lines: Iterator[str], stop_after: int | None = None) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events from a line iterator."""
    event: dict[str, Any] = {}
    seen = 0
    for line in lines:
        if line == "":
            if "event" in event:
                event["data"] = json.loads(event.get("data", "null"))
                yield event
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    return
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value

"""An HTTP proxy that breaks the calls it is told to break, in front of any HTTP service.

Put it between a client and a service (Stripe's stand-in, a webhook receiver) and arm
faults by method and path prefix; each fault hits the next `count` matching calls:

- `error_before`: answer 500 at once; the service never sees the call.
- `error_after`: pass the call on, then answer 500: the work is done, its answer is lost.
- `hang_before`: hold the call `seconds` (past the client's timeout), then answer 500 unseen.
- `hang_after`: pass the call on, then hold the answer `seconds`: done, and the client
  times out.

The proxy runs in a thread of the test process; `calls` records every call with the fault
it met and what the service answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.stripe_connect.processes import free_port

MODES = ("error_before", "error_after", "hang_before", "hang_after")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass
class Fault:
    mode: str
    path: str
    method: str
    count: int
    seconds: float


@dataclass
class Call:
    method: str
    path: str
    idempotency_key: str | None
    fault: str | None
    upstream_status: int | None = None
    at: float = field(default_factory=time.monotonic)


def _error_body() -> dict[str, Any]:
    return {"error": {"type": "api_error", "message": "An unknown error occurred (injected by the fault proxy)"}}


class FaultProxy:
    """A proxy to `upstream` on a free loopback port; use it as a context manager."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = uvicorn.Server(uvicorn.Config(self._app(), host="127.0.0.1", port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def fail(self, path: str, mode: str, *, count: int = 1, method: str = "POST", seconds: float = 3.0) -> None:
        """Break the next `count` calls of `method` to paths starting with `path`."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {MODES}")
        with self._lock:
            self.faults.append(Fault(mode, path, method.upper(), count, seconds))

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self.faults.clear()

    def armed(self) -> int:
        """How many faulty calls are still to come."""
        with self._lock:
            return sum(f.count for f in self.faults)

    def met(self, mode: str | None = None) -> list[Call]:
        """The calls that met a fault (of `mode`)."""
        with self._lock:
            return [c for c in self.calls if c.fault and (mode is None or c.fault == mode)]

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.count > 0 and fault.method == method and path.startswith(fault.path):
                    fault.count -= 1
                    return fault
        return None

    def _app(self) -> Starlette:
        client = httpx.AsyncClient(timeout=60)

        async def proxy(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            fault = self._take(request.method, path)
            call = Call(request.method, path, request.headers.get("idempotency-key"), fault.mode if fault else None)
            with self._lock:
                self.calls.append(call)
            if fault is not None and fault.mode in ("error_before", "hang_before"):
                if fault.mode == "hang_before":
                    await asyncio.sleep(fault.seconds)
                return JSONResponse(_error_body(), status_code=500)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = await client.request(request.method, self.upstream + path, params=request.query_params,
                                            content=body, headers=headers)
            call.upstream_status = upstream.status_code
            if fault is not None:  # error_after, hang_after: done upstream, the answer is lost
                if fault.mode == "hang_after":
                    await asyncio.sleep(fault.seconds)
                return JSONResponse(_error_body(), status_code=500)
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

        return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "DELETE", "PUT", "PATCH"])])

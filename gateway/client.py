"""A small Python client for the mediagate customer API (sync and async).

Self-contained on purpose: it imports only httpx, rich and the standard library, so it can
be copied or shipped on its own.

    from gateway.client import Client
    client = Client("https://api.example.com", key="mg_live_…")
    result = client.run("acme/flux-dev", {"prompt": "a lighthouse at dusk"})
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "canceled", "expired", "blocked")
__all__ = ["AsyncClient", "Client", "MediagateError", "RequestFailed"]


class MediagateError(Exception):
    """The API answered with an error (an RFC 9457 problem)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())
        self.status, self.problem = status, problem
        self.type = problem.get("type", "")


class RequestFailed(Exception):
    """A request ended without succeeding (`failed`, `canceled`, `expired`, `blocked`)."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        super().__init__(f"request {envelope['id']} ended {envelope['status']}: {envelope.get('error') or ''}".strip())
        self.envelope = envelope


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:500]}
        raise MediagateError(response.status_code, problem)
    return response.json()


def _submit_args(model: str, input: dict[str, Any], *, webhook: str | None, webhook_events: list[str] | None,
                 wait: float | None, idempotency_key: str | None, priority: str | None,
                 start_timeout: float | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"input": input}
    if webhook:
        body["webhook"] = webhook
    if webhook_events:
        body["webhook_events"] = webhook_events
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    if wait:
        headers["Prefer"] = f"wait={int(wait)}"
    if priority:
        headers["Priority"] = priority
    if start_timeout:
        headers["Request-Timeout"] = str(start_timeout)
    return f"/v1/models/{model}/requests", body, headers


def _parse_sse(lines: Iterator[str] | list[str], event: dict[str, str]) -> dict[str, Any] | None:
    """Feed lines; returns a finished event or None."""
    for line in lines:
        if line == "":
            if "event" in event:
                done = {"id": event.get("id"), "event": event["event"], "data": json.loads(event.get("data", "null"))}
                event.clear()
                return done
            event.clear()
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value
    return None


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}", "User-Agent": "mediagate-python/0.1"}


class Client:
    """Synchronous client. Retries submits safely: each carries an Idempotency-Key."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 90.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(key), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, model: str, input: dict[str, Any], *, webhook: str | None = None,
               webhook_events: list[str] | None = None, wait: float | None = None,
               idempotency_key: str | None = None, priority: str | None = None,
               start_timeout: float | None = None) -> dict[str, Any]:
        """Queue a request; returns its envelope (after up to `wait` seconds, if given)."""
        path, body, headers = _submit_args(model, input, webhook=webhook, webhook_events=webhook_events,
                                           wait=wait, idempotency_key=idempotency_key, priority=priority,
                                           start_timeout=start_timeout)
        for attempt in range(3):
            try:
                return _check(self._http.post(path, json=body, headers=headers))
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))  # the same Idempotency-Key: never a second request
        raise AssertionError("unreachable")

    def status(self, request_id: str) -> dict[str, Any]:
        """The request's envelope now."""
        return _check(self._http.get(f"/v1/requests/{request_id}"))

    def cancel(self, request_id: str) -> dict[str, Any]:
        """Cancel a queued or running request."""
        return _check(self._http.post(f"/v1/requests/{request_id}/cancel"))

    def stream(self, request_id: str, *, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The request's events (`status`, `progress`, `log`, `output`, `done`), resuming after drops."""
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self._http.stream("GET", f"/v1/requests/{request_id}/events", headers=headers,
                                       timeout=httpx.Timeout(self._http.timeout.connect, read=60)) as response:
                    if response.status_code >= 400:
                        response.read()
                        _check(response)
                    partial: dict[str, str] = {}
                    for line in response.iter_lines():
                        event = _parse_sse([line], partial)
                        if event is None:
                            continue
                        if event["id"]:
                            last_event_id = event["id"]
                        yield event
                        if event["event"] == "done":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(0.5)  # dropped: resume from the last event seen

    def result(self, request_id: str, *, timeout: float = 600.0) -> dict[str, Any]:
        """Wait for the request to finish (long polls of ≤ 60 s); its envelope, or RequestFailed."""
        deadline = time.monotonic() + timeout
        envelope = self.status(request_id)
        while envelope["status"] not in FINAL and time.monotonic() < deadline:
            wait = max(1, min(60, int(deadline - time.monotonic())))
            envelope = _check(self._http.get(f"/v1/requests/{request_id}", headers={"Prefer": f"wait={wait}"}))
        if envelope["status"] != "succeeded":
            raise RequestFailed(envelope)
        return envelope

    def run(self, model: str, input: dict[str, Any], *, progress: bool = True, console: Any = None,
            **submit: Any) -> dict[str, Any]:
        """Submit, follow its events (with a rich progress bar), and return the succeeded envelope."""
        envelope = self.submit(model, input, **submit)
        if envelope["status"] in FINAL:
            if envelope["status"] != "succeeded":
                raise RequestFailed(envelope)
            return envelope
        with _Progress(model, envelope["id"], enabled=progress, console=console) as bar:
            for event in self.stream(envelope["id"]):
                bar.update(event)
                if event["event"] == "done":
                    envelope = event["data"]
        if envelope.get("status") != "succeeded":
            raise RequestFailed(envelope if "id" in envelope else self.status(envelope["id"]))
        return envelope


class AsyncClient:
    """Asynchronous client, same calls as `Client`."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 90.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(key), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(self, model: str, input: dict[str, Any], *, webhook: str | None = None,
                     webhook_events: list[str] | None = None, wait: float | None = None,
                     idempotency_key: str | None = None, priority: str | None = None,
                     start_timeout: float | None = None) -> dict[str, Any]:
        """Queue a request; returns its envelope."""
        path, body, headers = _submit_args(model, input, webhook=webhook, webhook_events=webhook_events,
                                           wait=wait, idempotency_key=idempotency_key, priority=priority,
                                           start_timeout=start_timeout)
        return _check(await self._http.post(path, json=body, headers=headers))

    async def status(self, request_id: str) -> dict[str, Any]:
        """The request's envelope now."""
        return _check(await self._http.get(f"/v1/requests/{request_id}"))

    async def cancel(self, request_id: str) -> dict[str, Any]:
        """Cancel a queued or running request."""
        return _check(await self._http.post(f"/v1/requests/{request_id}/cancel"))

    async def stream(self, request_id: str, *, last_event_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The request's events, resuming after dropped connections."""
        import asyncio

        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                async with self._http.stream("GET", f"/v1/requests/{request_id}/events", headers=headers,
                                             timeout=httpx.Timeout(self._http.timeout.connect, read=60)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _check(response)
                    partial: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        event = _parse_sse([line], partial)
                        if event is None:
                            continue
                        if event["id"]:
                            last_event_id = event["id"]
                        yield event
                        if event["event"] == "done":
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                await asyncio.sleep(0.5)

    async def result(self, request_id: str, *, timeout: float = 600.0) -> dict[str, Any]:
        """Wait for the request to finish; its envelope, or RequestFailed."""
        envelope = await self.status(request_id)
        deadline = time.monotonic() + timeout
        while envelope["status"] not in FINAL and time.monotonic() < deadline:
            async for event in self.stream(request_id):
                if event["event"] == "done":
                    envelope = event["data"]
        if envelope["status"] != "succeeded":
            raise RequestFailed(envelope)
        return envelope

    async def run(self, model: str, input: dict[str, Any], **submit: Any) -> dict[str, Any]:
        """Submit and wait for the succeeded envelope."""
        envelope = await self.submit(model, input, **submit)
        if envelope["status"] in FINAL:
            if envelope["status"] != "succeeded":
                raise RequestFailed(envelope)
            return envelope
        return await self.result(envelope["id"])


class _Progress:
    """A rich progress bar fed by a request's events."""

    def __init__(self, model: str, request_id: str, *, enabled: bool, console: Any) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.task = self.progress.add_task(f"{model} {request_id}", total=None, status="queued")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *_: Any) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, event: dict[str, Any]) -> None:
        """Move the bar on `progress`, show the status on `status`, fill it on `done`."""
        if not self.enabled:
            return
        data = event["data"] or {}
        if event["event"] == "progress" and data.get("total"):
            self.progress.update(self.task, total=data["total"], completed=data.get("done", 0))
        elif event["event"] == "status":
            self.progress.update(self.task, status=data.get("status", ""))
        elif event["event"] == "done":
            total = self.progress.tasks[0].total or 1
            self.progress.update(self.task, total=total, completed=total, status=data.get("status", ""))

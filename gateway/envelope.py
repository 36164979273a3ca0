"""The request envelope customers read: status, output with signed file URLs, cost."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from gateway import repository as repo
from gateway.models import Request
from gateway.schemas import Envelope
from kit.settings import get_settings
from kit.signing import sign


def file_url(file_id: str) -> str:
    """A short-lived signed URL for an output file."""
    settings = get_settings()
    expires, signature = sign(file_id, settings.file_url_ttl_s)
    query = urlencode({"expires": expires, "signature": signature})
    return f"{settings.public_url}/v1/files/{file_id}?{query}"


def _with_urls(value: Any) -> Any:
    if isinstance(value, dict) and value.get("expired") is True and "file_name" in value:
        return {"url": None, **value}  # deleted under the account's retention setting
    if isinstance(value, dict) and "$file_id" in value:
        out = {k: v for k, v in value.items() if k != "$file_id"}
        return {"url": file_url(value["$file_id"]), **out}
    if isinstance(value, dict):
        return {k: _with_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_urls(v) for v in value]
    return value


def envelope(session: Session, req: Request, *, queue_position: int | None = None) -> Envelope:
    """Render a request for its account (`queue_position` when the caller already counted it)."""
    base = f"{get_settings().public_url}/v1/requests/{req.id}"
    queue_ms = req.queue_ms
    if queue_ms is None and req.started_at is not None:
        queue_ms = int((req.started_at - req.created_at).total_seconds() * 1000)
    return Envelope.model_validate({
        "id": req.id,
        "model": req.model_ref,
        "version": req.version_id,
        "status": req.status,
        "queue_position": (queue_position if queue_position is not None else repo.queue_position(session, req))
        if req.status == "queued" else None,
        "input": req.input,
        "output": _with_urls(req.output),
        "error": req.error,
        "metrics": {"queue_ms": queue_ms, "run_ms": req.run_ms},
        "cost": {"amount_micros": req.cost_micros, "currency": req.currency, "units": req.units},
        "moderation": {"input": req.moderation_input, "output": req.moderation_output},
        "created_at": req.created_at,
        "started_at": req.started_at,
        "completed_at": req.completed_at,
        "urls": {"self": base, "cancel": f"{base}/cancel", "events": f"{base}/events"},
    })

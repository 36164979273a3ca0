"""What follows a request's change of status: its events and its webhooks, both after commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from gateway import events, webhooks
from gateway.models import FINAL_STATUSES, Request
from kit.db import after_commit


def announce(session: Session, req: Request) -> None:
    """Publish the request's new status (and, when final, its output and `done`); queue webhooks."""
    status = req.status
    data: dict[str, Any] = {"status": status}
    if req.error and status != "succeeded":
        data["error"] = req.error
    final = status in FINAL_STATUSES
    rendered: dict[str, Any] | None = None
    if final or status == "running":
        from gateway.envelope import envelope

        session.flush()
        rendered = envelope(session, req).model_dump(mode="json")
    webhooks.queue_for(session, req, status, rendered)

    def publish() -> None:
        if final and rendered is not None and rendered.get("output") is not None:
            events.publish(req.id, "output", {"output": rendered["output"]})
        events.publish(req.id, "status", data)
        if final:
            events.publish(req.id, "done", rendered or {"status": status})

    after_commit(session, publish)

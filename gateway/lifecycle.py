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
    targets = webhooks.targets_for(session, req, status)
    if final or targets:
        from gateway.envelope import envelope

        session.flush()
        rendered = envelope(session, req).model_dump(mode="json")
    if targets:
        webhooks.queue_for(session, req, status, rendered, targets)

    def publish() -> None:
        batch: list[tuple[str, dict[str, Any]]] = []
        if final and rendered is not None and rendered.get("output") is not None:
            batch.append(("output", {"output": rendered["output"]}))
        batch.append(("status", data))
        if final:
            batch.append(("done", rendered or {"status": status}))
        events.publish_many(req.id, batch)

    after_commit(session, publish)

"""The worker's read of a request it is about to claim, in one statement.

The request (locked), its deployment, the deployment's version and model, and what the
request's input check recorded (its options and minor signal, which the output check
needs) come back together, so neither the claim nor the finish reads them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Request
from moderation.models import ModerationRecord
from partners.models import Deployment, Model, ModelVersion


@dataclass(frozen=True)
class ClaimRow:
    request: Request
    deployment: Deployment
    partner_id: str
    input_options: dict[str, Any]
    minor_signal: bool


def request_to_claim(session: Session, request_id: str) -> ClaimRow | None:
    """The request under a row lock, with its deployment, version and model in the session."""
    def recorded(column: Any) -> Any:
        # A correlated subquery rather than a LATERAL join, which SQLite lacks.
        return (select(column)
                .where(ModerationRecord.request_id == Request.id, ModerationRecord.stage == "input")
                .order_by(ModerationRecord.created_at.desc(), ModerationRecord.id.desc())
                .limit(1).scalar_subquery())

    row = session.execute(
        select(Request, Deployment, ModelVersion, Model, recorded(ModerationRecord.request_options),
               recorded(ModerationRecord.minor_signal))
        .join(Deployment, Deployment.id == Request.deployment_id)
        .join(ModelVersion, ModelVersion.id == Deployment.version_id)
        .join(Model, Model.id == Deployment.model_id)
        .where(Request.id == request_id)
        .with_for_update(of=Request)
    ).first()
    if row is None:
        return None
    req, deployment, _version, model, options, minor = row
    return ClaimRow(req, deployment, model.partner_id, dict(options or {}), bool(minor))

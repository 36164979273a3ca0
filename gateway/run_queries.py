"""The worker's reads and writes of a request it claims and finishes, one statement each.

The claim reads the request (locked), its deployment, the deployment's version and model,
and what the request's input check recorded (its options and minor signal, which the output
check needs) together, so neither the claim nor the finish reads them one by one. The
finish takes the request back with one UPDATE whose WHERE is the lease check, so only the
attempt that still holds the request gets it, locked, with its lease already cleared.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.orm import Session

from gateway.models import Request
from moderation.models import ModerationRecord
from partners.models import Deployment, Model, ModelVersion


@dataclass(frozen=True)
class ClaimRow:
    request: Request
    deployment: Deployment
    # Held here so they stay in the session's identity map (it keeps objects weakly) and the
    # deployment's replica spec finds them there instead of reading them again.
    version: ModelVersion
    model: Model
    partner_id: str
    input_options: dict[str, Any]
    minor_signal: bool


@functools.cache
def _claim_statement() -> Select[Any]:
    def recorded(column: Any) -> Any:
        # A correlated subquery rather than a LATERAL join, which SQLite lacks.
        return (select(column)
                .where(ModerationRecord.request_id == Request.id, ModerationRecord.stage == "input")
                .order_by(ModerationRecord.created_at.desc(), ModerationRecord.id.desc())
                .limit(1).scalar_subquery())

    return (select(Request, Deployment, ModelVersion, Model, recorded(ModerationRecord.request_options),
                   recorded(ModerationRecord.minor_signal))
            .join(Deployment, Deployment.id == Request.deployment_id)
            .join(ModelVersion, ModelVersion.id == Deployment.version_id)
            .join(Model, Model.id == Deployment.model_id)
            .where(Request.id == bindparam("request_id"))
            .with_for_update(of=Request))


def request_to_claim(session: Session, request_id: str) -> ClaimRow | None:
    """The request under a row lock, with its deployment, version and model in the session."""
    row = session.execute(_claim_statement(), {"request_id": request_id}).first()
    if row is None:
        return None
    req, deployment, version, model, options, minor = row
    return ClaimRow(req, deployment, version, model, model.partner_id, dict(options or {}), bool(minor))


@functools.cache
def _finish_statement() -> Any:
    return (update(Request)
            .where(Request.id == bindparam("request_id"), Request.status == "running",
                   Request.attempts == bindparam("attempt"), Request.lease_owner == bindparam("owner"))
            .values(lease_expires_at=None)
            .returning(Request))


def request_to_finish(session: Session, request_id: str, *, attempt: int, owner: str) -> Request | None:
    """The request, locked and its lease ended, if attempt `attempt` of `owner` still holds it
    (running, not taken over, not finished); None otherwise, and nothing is changed."""
    return session.scalars(_finish_statement(), {"request_id": request_id, "attempt": attempt, "owner": owner},
                           execution_options={"populate_existing": True,
                                              "synchronize_session": False}).first()


def cancel_requested_among(session: Session, request_ids: list[str]) -> set[str]:
    """Which of these requests a customer asked to cancel."""
    if not request_ids:
        return set()
    return set(session.scalars(select(Request.id).where(Request.id.in_(request_ids), Request.cancel_requested)))

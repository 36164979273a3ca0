"""All of moderation's SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, case, func, insert, select
from sqlalchemy.orm import Session

from moderation.models import (
    AccountHold,
    EvidenceRecord,
    ModerationPolicy,
    ModerationPolicyChange,
    ModerationRecord,
    ModerationStaff,
    ReviewTask,
)


def add(session: Session, row: Any) -> Any:
    """Add a row and flush, so its id and defaults are set."""
    session.add(row)
    session.flush()
    return row


_INSERT_RECORD = insert(ModerationRecord.__table__)


def insert_record(session: Session, values: dict[str, Any]) -> None:
    """Write one check's record as a single INSERT, outside the unit of work (every submit
    writes one, so it skips the ORM's flush bookkeeping); columns left out get their defaults."""
    session.connection().execute(_INSERT_RECORD, values)


def insert_record_per_row(rows: Any, columns: tuple[str, ...]) -> Any:
    """An INSERT of one check record for each row of `rows` (a CTE of what the record belongs
    to), for a caller to run inside its own statement: the record is written exactly when
    those rows are. Values are bound as `mod_<column>`."""
    return insert(ModerationRecord.__table__).from_select(
        list(columns),
        select(*[bindparam(f"mod_{c}", type_=ModerationRecord.__table__.c[c].type) for c in columns])
        .select_from(rows))


def policy(session: Session, scope: str, subject_id: str, source: str) -> ModerationPolicy | None:
    return session.scalars(select(ModerationPolicy).where(
        ModerationPolicy.scope == scope, ModerationPolicy.subject_id == subject_id,
        ModerationPolicy.source == source)).first()


def policies_for(session: Session, *, account_id: str, model_id: str) -> list[ModerationPolicy]:
    """The account's layer and the model's layers, in one query."""
    return list(session.scalars(select(ModerationPolicy).where(
        ((ModerationPolicy.scope == "account") & (ModerationPolicy.subject_id == account_id))
        | ((ModerationPolicy.scope == "model") & (ModerationPolicy.subject_id == model_id))
    ).order_by(ModerationPolicy.scope, ModerationPolicy.source)))


def policy_history(session: Session, policy_id: str) -> list[ModerationPolicyChange]:
    return list(session.scalars(select(ModerationPolicyChange).where(
        ModerationPolicyChange.policy_id == policy_id).order_by(ModerationPolicyChange.version)))


def record(session: Session, record_id: str) -> ModerationRecord | None:
    return session.get(ModerationRecord, record_id)


def records_for_request(session: Session, request_id: str) -> list[ModerationRecord]:
    return list(session.scalars(select(ModerationRecord).where(
        ModerationRecord.request_id == request_id).order_by(ModerationRecord.created_at,
                                                            ModerationRecord.id)))


def latest_input_record(session: Session, request_id: str) -> ModerationRecord | None:
    return session.scalars(select(ModerationRecord).where(
        ModerationRecord.request_id == request_id, ModerationRecord.stage == "input",
    ).order_by(ModerationRecord.created_at.desc(), ModerationRecord.id.desc())).first()


def list_records(
    session: Session, *, account_id: str | None = None, model_id: str | None = None,
    decision: str | None = None, stage: str | None = None, limit: int = 100,
) -> list[ModerationRecord]:
    query = select(ModerationRecord)
    if account_id:
        query = query.where(ModerationRecord.account_id == account_id)
    if model_id:
        query = query.where(ModerationRecord.model_id == model_id)
    if decision:
        query = query.where(ModerationRecord.decision == decision)
    if stage:
        query = query.where(ModerationRecord.stage == stage)
    return list(session.scalars(query.order_by(ModerationRecord.created_at.desc(),
                                               ModerationRecord.id.desc()).limit(limit)))


def active_hold(session: Session, account_id: str) -> AccountHold | None:
    return session.scalars(select(AccountHold).where(
        AccountHold.account_id == account_id, AccountHold.status == "active",
    ).order_by(AccountHold.created_at)).first()


def has_active_hold(session: Session, account_id: str) -> bool:
    return session.scalar(select(func.count()).select_from(AccountHold).where(
        AccountHold.account_id == account_id, AccountHold.status == "active")) > 0


def list_holds(session: Session, *, status: str | None = "active", limit: int = 200) -> list[AccountHold]:
    query = select(AccountHold)
    if status:
        query = query.where(AccountHold.status == status)
    return list(session.scalars(query.order_by(AccountHold.created_at.desc()).limit(limit)))


def evidence(session: Session, evidence_id: str) -> EvidenceRecord | None:
    return session.get(EvidenceRecord, evidence_id)


def evidence_for_account(session: Session, account_id: str) -> list[EvidenceRecord]:
    return list(session.scalars(select(EvidenceRecord).where(
        EvidenceRecord.account_id == account_id).order_by(EvidenceRecord.created_at)))


def review_task(session: Session, task_id: str) -> ReviewTask | None:
    return session.get(ReviewTask, task_id)


def list_review_tasks(session: Session, *, status: str | None = "open", limit: int = 200) -> list[ReviewTask]:
    query = select(ReviewTask)
    if status:
        query = query.where(ReviewTask.status == status)
    return list(session.scalars(query.order_by(ReviewTask.priority, ReviewTask.created_at).limit(limit)))


def open_tasks_for_hold(session: Session, hold_id: str) -> list[ReviewTask]:
    return list(session.scalars(select(ReviewTask).where(
        ReviewTask.hold_id == hold_id, ReviewTask.status == "open")))


def staff_by_digest(session: Session, digest: str) -> ModerationStaff | None:
    return session.scalars(select(ModerationStaff).where(
        ModerationStaff.key_digest == digest, ModerationStaff.active.is_(True))).first()


def aggregate(
    session: Session, *, by: str, since: dt.datetime | None, until: dt.datetime | None,
    subject_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Counts per model or per account: checks, blocks by stage, NSFW-flagged outputs."""
    key = ModerationRecord.model_id if by == "model" else ModerationRecord.account_id
    output = ModerationRecord.stage == "output"
    inp = ModerationRecord.stage == "input"
    blocked = ModerationRecord.decision == "blocked"

    def count_if(cond: Any) -> Any:
        return func.sum(case((cond, 1), else_=0))

    query = select(
        key.label("subject_id"),
        count_if(inp).label("inputs_checked"),
        count_if(inp & blocked).label("inputs_blocked"),
        count_if(inp & (ModerationRecord.decision == "flagged")).label("inputs_flagged"),
        count_if(output).label("outputs_checked"),
        count_if(output & blocked).label("outputs_blocked"),
        count_if(output & (ModerationRecord.decision == "flagged")).label("outputs_flagged"),
        count_if(output & ModerationRecord.nsfw).label("outputs_nsfw"),
        count_if(ModerationRecord.error.is_not(None)).label("check_errors"),
    ).group_by(key).order_by(key)
    if since is not None:
        query = query.where(ModerationRecord.created_at >= since)
    if until is not None:
        query = query.where(ModerationRecord.created_at < until)
    if subject_ids:
        query = query.where(key.in_(list(subject_ids)))
    return [dict(row._mapping) for row in session.execute(query)]


def category_counts(
    session: Session, *, by: str, since: dt.datetime | None, until: dt.datetime | None,
) -> list[tuple[str, list[str]]]:
    """(subject, categories) of every blocked or flagged record, for per-category totals."""
    key = ModerationRecord.model_id if by == "model" else ModerationRecord.account_id
    query = select(key, ModerationRecord.categories).where(ModerationRecord.decision != "passed")
    if since is not None:
        query = query.where(ModerationRecord.created_at >= since)
    if until is not None:
        query = query.where(ModerationRecord.created_at < until)
    return [(row[0], list(row[1] or [])) for row in session.execute(query)]

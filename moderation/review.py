"""Trust-and-safety staff actions: the review queue, holds, staff keys, and aggregates."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import Conflict, InvalidInput, NotFound
from kit.keys import key_digest, new_key
from moderation import repository as repo
from moderation.escalation import build_report, get_report_sink
from moderation.models import AccountHold, ModerationStaff, ReviewTask

RESOLUTIONS = ("reported", "dismissed", "confirmed")


def create_staff(session: Session, *, name: str, role: str = "reviewer") -> tuple[ModerationStaff, str]:
    """A new staff member and their API key (`mgs_…`, shown once, stored hashed)."""
    if role not in ("reviewer", "admin"):
        raise InvalidInput("role is 'reviewer' or 'admin'")
    key = new_key("mgs")
    staff = repo.add(session, ModerationStaff(name=name, role=role, key_digest=key_digest(key)))
    return staff, key


def staff_for_key(session: Session, key: str) -> ModerationStaff | None:
    """The active staff member a key belongs to."""
    if not key.startswith("mgs_"):
        return None
    return repo.staff_by_digest(session, key_digest(key))


def release_hold(session: Session, *, account_id: str, staff_id: str, note: str) -> AccountHold:
    """Lift an account's active hold after review."""
    hold = repo.active_hold(session, account_id)
    if hold is None:
        raise NotFound(f"account {account_id} has no active hold")
    if not note.strip():
        raise InvalidInput("a note is required to release a hold")
    hold.status = "released"
    hold.released_at = utcnow()
    hold.released_by = staff_id
    hold.release_note = note
    session.flush()
    return hold


def resolve_review(
    session: Session, *, task_id: str, staff_id: str, resolution: str, note: str = "",
    release: bool = False,
) -> ReviewTask:
    """Close a review task.

    `reported`: the report is filed through the report sink (its reference is kept);
    `confirmed`: a violation that needs no external report; `dismissed`: a false
    positive. With `release`, the account's hold is lifted too (not after `reported`).
    """
    if resolution not in RESOLUTIONS:
        raise InvalidInput(f"resolution is one of {', '.join(RESOLUTIONS)}")
    task = repo.review_task(session, task_id)
    if task is None:
        raise NotFound(f"review task {task_id} not found")
    if task.status != "open":
        raise Conflict(f"review task {task_id} is already {task.status}")
    if resolution == "reported":
        if release:
            raise InvalidInput("a reported account stays on hold")
        task.external_ref = get_report_sink().submit(build_report(session, task))
    task.status = resolution
    task.resolved_at = utcnow()
    task.resolved_by = staff_id
    task.resolution_note = note
    session.flush()
    if release and task.hold_id:
        others = [t for t in repo.open_tasks_for_hold(session, task.hold_id) if t.id != task.id]
        if others:
            raise Conflict("the hold has other open review tasks")
        release_hold(session, account_id=task.account_id, staff_id=staff_id,
                     note=note or f"released on review of {task.id}")
    return task


def moderation_stats(
    session: Session, *, by: str = "model", since: dt.datetime | None = None,
    until: dt.datetime | None = None, subject_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Per model or per account: checks, blocks, flags, the NSFW share of outputs, categories.

    For finance (share of NSFW-flagged outputs per model and account) and for partners
    (their own models: pass `subject_ids`).
    """
    if by not in ("model", "account"):
        raise InvalidInput("by is 'model' or 'account'")
    rows = repo.aggregate(session, by=by, since=since, until=until, subject_ids=subject_ids)
    per_subject: dict[str, dict[str, int]] = {}
    for subject, categories in repo.category_counts(session, by=by, since=since, until=until):
        counts = per_subject.setdefault(subject, {})
        for category in categories:
            counts[category] = counts.get(category, 0) + 1
    out = []
    for row in rows:
        row = {k: (int(v) if isinstance(v, int | float) and k != "subject_id" else v)
               for k, v in row.items()}
        outputs = row["outputs_checked"]
        row["nsfw_share"] = round(row["outputs_nsfw"] / outputs, 6) if outputs else 0.0
        row["blocked"] = row["inputs_blocked"] + row["outputs_blocked"]
        row["categories"] = dict(sorted(per_subject.get(row["subject_id"], {}).items()))
        out.append(row)
    return out

"""Escalation of child-safety hits: evidence preserved, the account held, a review task queued.

The evidence store is a directory only the service user can read
(`<data_dir>/evidence`, mode 0700, files 0600). It holds manifests of hashes and metadata:
file SHA-256 and PDQ hashes, the list entries matched, the terms matched, ids and times.
The content itself is never written there, and no staff page shows it.

Reports: a `csam_report` task ends with a report to the competent authority (in the US,
NCMEC's CyberTipline). The report goes through a `ReportSink`; the default one writes the
report body into the evidence store for a person to file, and `set_report_sink` plugs in
an integration that files it directly and returns the external reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.ids import new_id
from moderation import repository as repo
from moderation.config import get_moderation_settings
from moderation.models import AccountHold, EvidenceRecord, ModerationRecord, ReviewTask


@dataclass(frozen=True)
class Escalation:
    """What an escalation created."""

    evidence_id: str
    task_id: str
    hold_id: str | None


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def evidence_root() -> Path:
    """The restricted evidence directory, created 0700 on first use."""
    return _private_dir(get_moderation_settings().evidence_dir)


def _write_private(path: Path, payload: dict[str, Any]) -> str:
    """Write JSON readable only by the service user; returns its SHA-256."""
    _private_dir(path.parent)
    data = json.dumps(payload, sort_keys=True, indent=2, default=str).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def verify_manifest(evidence: EvidenceRecord) -> bool:
    """True when the manifest on disk is exactly what was written."""
    path = evidence_root() / evidence.manifest_path
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == evidence.manifest_sha256
    except OSError:
        return False


def preserve_evidence(
    session: Session, *, record: ModerationRecord, category: str, strength: str,
    details: dict[str, Any],
) -> EvidenceRecord:
    """Write the evidence manifest and its database row."""
    evidence_id = new_id("evd")
    now = utcnow()
    manifest = {
        "evidence_id": evidence_id,
        "created_at": now.isoformat(),
        "category": category,
        "strength": strength,
        "record_id": record.id,
        "request_id": record.request_id,
        "account_id": record.account_id,
        "model_id": record.model_id,
        "stage": record.stage,
        "policy_version": record.policy_version,
        "details": details,
    }
    relative = Path(now.strftime("%Y/%m")) / f"{evidence_id}.json"
    digest = _write_private(evidence_root() / relative, manifest)
    return repo.add(session, EvidenceRecord(
        id=evidence_id, record_id=record.id, request_id=record.request_id,
        account_id=record.account_id, model_id=record.model_id, stage=record.stage,
        category=category, manifest_path=str(relative), manifest_sha256=digest,
        summary={"strength": strength, **{k: v for k, v in details.items() if k != "files"},
                 "files": [{k: f.get(k) for k in ("sha256", "pdq", "matches", "kind")}
                           for f in details.get("files", [])]},
    ))


def escalate(
    session: Session, *, record: ModerationRecord, strength: str, details: dict[str, Any],
) -> Escalation:
    """Handle a csam hit: evidence always; a confirmed-strength hit also holds the account.

    `strength` is "strong" (a direct term, a minor with explicit sexual terms, a hash-list
    match, a minor-indicating prompt with nudity in the output) or "suspected" (a minor
    with suggestive terms): suspected hits are queued for review without a hold.
    """
    evidence = preserve_evidence(session, record=record, category="csam", strength=strength,
                                 details=details)
    hold: AccountHold | None = None
    if strength == "strong":
        hold = repo.active_hold(session, record.account_id)
        if hold is None:
            hold = repo.add(session, AccountHold(
                account_id=record.account_id, category="csam",
                reason=f"child-safety hit on {record.stage} of request {record.request_id or '(none)'}",
                record_id=record.id, evidence_id=evidence.id))
    source = ", ".join(
        [f"hash list {m['list_name']} (distance {m['distance']})"
         for f in details.get("files", []) for m in f.get("matches", [])]
        + [f"terms {', '.join(details.get('terms', []))}"] * bool(details.get("terms"))
        + [details["rule"]] * bool(details.get("rule")))
    task = repo.add(session, ReviewTask(
        kind="csam_report" if strength == "strong" else "csam_review",
        priority=0 if strength == "strong" else 1,
        account_id=record.account_id, model_id=record.model_id, request_id=record.request_id,
        record_id=record.id, evidence_id=evidence.id, hold_id=hold.id if hold else None,
        summary=f"{strength} csam signal on {record.stage}: {source or 'see evidence'}",
    ))
    return Escalation(evidence_id=evidence.id, task_id=task.id, hold_id=hold.id if hold else None)


# -- reporting ------------------------------------------------------------------------------

class ReportSink(Protocol):
    """Where a confirmed child-safety report goes; returns the external reference."""

    def submit(self, report: dict[str, Any]) -> str: ...


class EvidenceFolderSink:
    """Writes the report body next to the evidence, for a person to file by hand."""

    def submit(self, report: dict[str, Any]) -> str:
        name = f"{report['task_id']}.json"
        path = evidence_root() / "reports" / name
        if not path.exists():
            _write_private(path, report)
        return f"local:reports/{name}"


_sink_lock = threading.Lock()
_sink: ReportSink = EvidenceFolderSink()


def set_report_sink(sink: ReportSink) -> None:
    """Install the report integration (e.g. a CyberTipline client) for this process."""
    global _sink
    with _sink_lock:
        _sink = sink


def get_report_sink() -> ReportSink:
    """The installed report integration."""
    return _sink


def build_report(session: Session, task: ReviewTask) -> dict[str, Any]:
    """The report body: ids, times, hashes and the evidence manifest's digest; no content."""
    evidence = repo.evidence(session, task.evidence_id) if task.evidence_id else None
    record = repo.record(session, task.record_id)
    return {
        "task_id": task.id,
        "kind": task.kind,
        "account_id": task.account_id,
        "model_id": task.model_id,
        "request_id": task.request_id,
        "detected_at": record.created_at.isoformat() if record else None,
        "stage": record.stage if record else None,
        "evidence_id": evidence.id if evidence else None,
        "evidence_manifest_sha256": evidence.manifest_sha256 if evidence else None,
        "evidence_summary": evidence.summary if evidence else None,
    }

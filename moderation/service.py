"""Moderation entry points for the gateway: `check_input`, `check_output` and account holds.

How the gateway uses them (every function takes the caller's session and only flushes;
the caller's commit makes the record, holds and evidence rows durable):

On submit (`POST /v1/models/{owner}/{model}/requests`):
  1. `is_account_suspended(session, account_id)`: if True, refuse the request (403,
     problem type `account-suspended`); nothing is queued or charged.
  2. `verdict = check_input(session, account_id=..., model_id=..., input=body["input"],
     request_id=<the new request id, if already generated>)`.
     - `verdict.blocked`: create the Request with status `blocked` (or answer 422 without a
       Request, as the gateway prefers), never queue it, never charge it; the envelope's
       `moderation` is `moderation_summary(session, request_id)`; show `verdict.reason`.
     - otherwise queue as usual. `verdict.decision` is `passed` or `flagged` (allowed,
       recorded). If the request id was not known when checking, call
       `link_request(session, record_id=verdict.record_id, request_id=...)` once it is.
  Request options: `enable_safety_checker` and `safety_tolerance` are read from `input`
  (or from `request_options=` when given). They only tighten the account's policy.

After the run, before any output is stored where the customer can fetch it:
  3. `verdict = check_output(session, account_id=..., model_id=..., request_id=...,
     files=[Path, ...])` with the output files still in the worker's scratch space.
     - `verdict.blocked`: store none of the files, delete them from scratch, set the
       request `blocked`, do not charge it. (A csam hit has already preserved evidence,
       held the account and queued a review task; `verdict.escalated` says so.)
     - otherwise, for each `f in verdict.files`:
         `f.action == "keep"`: store `f.path` as usual;
         `f.action == "replace"`: store `f.replace_with` in its place (a blurred
           stand-in that moderation wrote next to the original: same dimensions, same
           format for PNG/JPEG/WebP, PNG otherwise), e.g. `os.replace(f.replace_with,
           f.path)`; `verdict.replacements` maps original → stand-in for convenience.
       `flagged` outputs are still delivered (and charged); the flag is for tracking.
  The envelope's `moderation` is `moderation_summary(session, request_id)`:
  `{"input": "passed", "output": "flagged", "categories": [...], "reason": ...}`.

Failure: a checker that errors (bad model file, unreadable hash list, corrupt or
oversized output, unknown file type) yields `blocked` with the reason; nothing passes
unchecked. Only a database error propagates, which fails the caller's transaction.

Worker start: `warm_up()` loads the models and hash lists once per process.

Also here: policy setters (`set_account_policy`, `set_model_policy`, from
`moderation.policy_service`), aggregates for finance and partners (`moderation_stats`),
and staff actions (`moderation.review`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from kit.ids import new_id
from moderation import repository as repo
from moderation.cache import HOLD, cached
from moderation.categories import BLOCKED, CSAM, FLAGGED, PASSED, SEXUAL
from moderation.config import get_moderation_settings
from moderation.escalation import escalate
from moderation.models import ModerationRecord
from moderation.policies import RequestOptions, outcome, reason_text
from moderation.policy_service import effective_policy, set_account_policy, set_model_policy
from moderation.review import moderation_stats
from moderation.verdicts import FileVerdict, Verdict

__all__ = [
    "FileVerdict", "Verdict", "check_input", "check_output", "is_account_suspended",
    "link_request", "write_record", "moderation_summary", "set_account_policy", "set_model_policy",
    "moderation_stats", "effective_policy", "warm_up",
]


# -- helpers --------------------------------------------------------------------------------

_SKIP_KEYS = frozenset({"enable_safety_checker", "safety_tolerance", "seed", "sync_mode",
                        "output_format", "webhook", "webhook_events"})


def _looks_binary(text: str) -> bool:
    """Data URIs and base64 blobs: not language, and their letters would only mislead."""
    if text.startswith("data:"):
        return True
    return len(text) > 256 and " " not in text[:256]


def input_texts(value: Any, *, _key: str | None = None) -> tuple[list[str], int]:
    """Every human-language string in a request input, and how many blobs were skipped."""
    if isinstance(value, str):
        if _looks_binary(value):
            return [], 1
        return [value], 0
    texts: list[str] = []
    skipped = 0
    items: list[tuple[str | None, Any]] = []
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items() if str(k) not in _SKIP_KEYS]
    elif isinstance(value, list | tuple):
        items = [(_key, v) for v in value]
    for key, item in items:
        t, s = input_texts(item, _key=key)
        texts += t
        skipped += s
    return texts, skipped


_DECISION_RANK = {PASSED: 0, FLAGGED: 1, BLOCKED: 2}


def _record(session: Session, **fields: Any) -> str:
    """Write a check's record; returns its id (`escalate` loads the row when it needs it)."""
    record_id = new_id("mod")
    repo.insert_record(session, {"id": record_id, **fields})
    return record_id


def _hold_verdict(session: Session, *, account_id: str, model_id: str, request_id: str | None,
                  stage: str, started: float) -> Verdict:
    reason = "the account is suspended pending review"
    record_id = _record(
        session, request_id=request_id, account_id=account_id, model_id=model_id, stage=stage,
        decision=BLOCKED, categories=["account_hold"], policy_version="hold", policy={},
        reason=reason, checks=[{"name": "account_hold", "ok": True}],
        latency_ms=(time.perf_counter() - started) * 1000)
    return Verdict(BLOCKED, ["account_hold"], reason, record_id=record_id, stage=stage,
                   policy_version="hold", account_suspended=True)


# -- the checks -----------------------------------------------------------------------------

def check_input(
    session: Session,
    *,
    account_id: str,
    model_id: str,
    input: dict[str, Any],
    request_id: str | None = None,
    request_options: Mapping[str, Any] | None = None,
    defer_record: bool = False,
) -> Verdict:
    """Check every text input of a request before it is queued (prompts, negative prompts, …).

    With `defer_record`, the record comes back in `verdict.record` for the caller to write in
    the same transaction (the gateway writes it with its request, in one statement, and only
    if the request is written); a hit that escalates is always recorded here and now.
    """
    from moderation.text.check import analyze_text

    started = time.perf_counter()
    settings = get_moderation_settings()
    if is_account_suspended(session, account_id):
        return _hold_verdict(session, account_id=account_id, model_id=model_id,
                             request_id=request_id, stage="input", started=started)
    options = RequestOptions.from_input(request_options if request_options is not None else input)
    policy = effective_policy(session, account_id=account_id, model_id=model_id,
                              request_options=options)
    option_fields = {"enable_safety_checker": options.enable_safety_checker,
                     "safety_tolerance": options.safety_tolerance}
    checks: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    error: str | None = None
    findings = None
    try:
        texts, skipped = input_texts(input)
        chars = sum(len(t) for t in texts)
        if chars > settings.max_text_chars:
            raise ValueError(f"{chars} characters of text is over the checkable {settings.max_text_chars}")
        t0 = time.perf_counter()
        findings = analyze_text(texts, custom_terms=policy.custom_terms,
                                profanity_threshold=settings.profanity_threshold)
        checks.append({"name": "text", "ok": True, "ms": round((time.perf_counter() - t0) * 1000, 3),
                       "texts": len(texts), "chars": chars, "binary_skipped": skipped})
        scores = findings.to_dict()
        decision, categories, _ = outcome(policy, findings.categories, stage="input")
        reason = reason_text("input", decision, categories)
    except Exception as exc:  # fail closed: an input that could not be checked does not run
        error = f"{type(exc).__name__}: {exc}"
        checks.append({"name": "text", "ok": False, "error": error})
        decision, categories = BLOCKED, ["check_error"]
        reason = "the input could not be checked, so it was blocked"

    fields = dict(
        request_id=request_id, account_id=account_id, model_id=model_id, stage="input",
        decision=decision, categories=categories, reason=reason, scores=scores, checks=checks,
        policy_version=policy.fingerprint, policy=policy.to_dict(), request_options=option_fields,
        minor_signal=bool(findings and findings.minor), error=error,
        latency_ms=(time.perf_counter() - started) * 1000)
    escalating = findings is not None and CSAM in findings.categories
    record: dict[str, Any] | None = None
    if defer_record and not escalating:
        record = {"id": new_id("mod"), **fields}
        record_id = record["id"]
    else:
        record_id = _record(session, **fields)
    verdict = Verdict(decision, categories, reason, record_id=record_id, stage="input",
                      scores=dict(findings.categories) if findings else {},
                      policy_version=policy.fingerprint, notes=list(policy.notes), record=record)
    if escalating:
        strength = findings.csam_strength or "strong"
        esc = escalate(session, record=_stored(session, record_id), strength=strength, details={
            "terms": sorted({t for s in ("csam", "minor", "sexual", "suggestive")
                             for t in findings.matches.get(s, [])}),
            "rule": ("direct term, or minor indicator with explicit sexual terms" if strength == "strong"
                     else "minor indicator with suggestive terms"),
            "text_sha256": _texts_digest(input_texts(input)[0]),
        })
        verdict.escalated = True
        verdict.account_suspended = esc.hold_id is not None
    return verdict


def _stored(session: Session, record_id: str) -> ModerationRecord:
    record = repo.record(session, record_id)
    assert record is not None  # written by this transaction
    return record


def _texts_digest(texts: Sequence[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def check_output(
    session: Session,
    *,
    account_id: str,
    model_id: str,
    request_id: str,
    files: list[Path],
    request_options: Mapping[str, Any] | None = None,
    minor_signal: bool | None = None,
) -> Verdict:
    """Check a request's output files before the customer can fetch them.

    A caller that already holds what the input check recorded (its `request_options` and
    `minor_signal`) passes both, and the input record is not read again.
    """
    from moderation.output import check_files

    started = time.perf_counter()
    known = request_options is not None and minor_signal is not None
    input_record = None if known else repo.latest_input_record(session, request_id)
    if request_options is not None:
        options = RequestOptions.from_input(request_options)
    elif input_record is not None:
        options = RequestOptions.from_input(input_record.request_options)
    else:
        options = RequestOptions()
    policy = effective_policy(session, account_id=account_id, model_id=model_id,
                              request_options=options)
    minor = bool(minor_signal) if known else bool(input_record and input_record.minor_signal)
    result = check_files([Path(f) for f in files], policy=policy, minor_signal=minor)

    decision = PASSED
    categories: list[str] = []
    for fv in result.files:
        for c in fv.categories:
            if c not in categories:
                categories.append(c)
        if _DECISION_RANK[fv.decision] > _DECISION_RANK[decision]:
            decision = fv.decision
    if decision == BLOCKED:
        # Nothing of a blocked output is kept, the stand-ins included.
        for fv in result.files:
            if fv.replace_with is not None:
                fv.replace_with.unlink(missing_ok=True)
                fv.replace_with = None
            fv.action = "drop"
    reason = result.error_reason if result.error_reason and decision == BLOCKED else \
        reason_text("output", decision, categories)
    record_id = _record(
        session, request_id=request_id, account_id=account_id, model_id=model_id, stage="output",
        decision=decision, categories=categories, reason=reason,
        scores={"files": [f.to_dict() for f in result.findings]}, checks=result.checks,
        policy_version=policy.fingerprint, policy=policy.to_dict(),
        request_options={"enable_safety_checker": options.enable_safety_checker,
                         "safety_tolerance": options.safety_tolerance},
        minor_signal=minor, nsfw=result.nsfw, files_checked=len(files), error=result.error,
        latency_ms=(time.perf_counter() - started) * 1000)
    verdict = Verdict(decision, categories, reason, record_id=record_id, stage="output",
                      scores=result.scores, policy_version=policy.fingerprint, files=result.files,
                      notes=list(policy.notes))
    if result.csam_strength:
        esc = escalate(session, record=_stored(session, record_id), strength=result.csam_strength, details={
            "files": [f.to_dict() for f in result.findings if CSAM in f.categories],
            "rule": result.csam_rule,
        })
        verdict.escalated = True
        verdict.account_suspended = esc.hold_id is not None
    return verdict


# -- for the gateway ------------------------------------------------------------------------

def warm_up() -> None:
    """Load the term lists, classifier, NSFW model and hash lists now (call at worker start),
    so the first request does not pay for it. Errors surface here rather than later."""
    from moderation.images.hashing import get_registry
    from moderation.images.nsfw import get_detector
    from moderation.text.classifier import load
    from moderation.text.terms import builtin_index

    settings = get_moderation_settings()
    builtin_index()
    load()
    get_detector(settings.nsfw_model_path, settings.nsfw_threads)
    get_registry(settings.hash_list_dir, settings.hash_lists)


def is_account_suspended(session: Session, account_id: str) -> bool:
    """True while the account has an active hold; the gateway refuses its submits.

    Cached per process; a new or released hold reaches every process at once (see
    `moderation.cache`)."""
    return cached(session, HOLD, account_id, lambda: repo.has_active_hold(session, account_id))


def write_record(session: Session, verdict: Verdict) -> None:
    """Write a deferred record (see `check_input`'s `defer_record`) on its own."""
    if verdict.record is not None:
        repo.insert_record(session, verdict.record)
        verdict.record = None


def link_request(session: Session, *, record_id: str, request_id: str) -> None:
    """Attach an input record to its request, when the request id was made after the check."""
    record = repo.record(session, record_id)
    if record is not None and record.request_id is None:
        record.request_id = request_id
        session.flush()


def moderation_summary(session: Session, request_id: str) -> dict[str, Any]:
    """The envelope's `moderation` object: each stage's decision, categories and reason."""
    summary: dict[str, Any] = {"input": None, "output": None, "categories": [], "reason": None}
    for record in repo.records_for_request(session, request_id):
        summary[record.stage] = record.decision
        for c in record.categories or []:
            if c not in summary["categories"]:
                summary["categories"].append(c)
        if record.decision != PASSED:
            summary["reason"] = record.reason
    return summary


def nsfw_output(verdict: Verdict) -> bool:
    """True when any output file scored as sexual nudity (allowed or not)."""
    return SEXUAL in verdict.scores

"""The trust-and-safety API (`/v1/moderation`) and review page (`/moderation/review`).

Staff authenticate with a staff key (`Authorization: Bearer mgs_…`; the page also takes
it from the `mg_staff` cookie set by `/moderation/login`). Nothing here ever serves the
content of an input or output: records, hashes, scores and ids only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi import Cookie, Depends, Form, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import Forbidden, NotFound, Unauthorized
from kit.keys import bearer_token
from kit.signing import sign, verify
from kit.web import router as make_router
from moderation import repository as repo
from moderation.escalation import verify_manifest
from moderation.models import ModerationStaff
from moderation.policy_service import set_account_policy, set_model_policy
from moderation.review import moderation_stats, release_hold, resolve_review, staff_for_key
from moderation.schemas import (
    AccountPolicyIn,
    EvidenceOut,
    HoldOut,
    ModelPolicyIn,
    PolicyOut,
    RecordOut,
    ReleaseIn,
    ResolveIn,
    ReviewTaskDetail,
    ReviewTaskOut,
    StatsRow,
)

router = make_router(tags=["moderation"])
_templates = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                         autoescape=select_autoescape(["html"]))
COOKIE = "mg_staff"


def current_staff(
    authorization: str | None = Header(default=None),
    mg_staff: str | None = Cookie(default=None),
    session: Session = Depends(get_session),
) -> ModerationStaff:
    """The staff member whose key signed this request."""
    key = bearer_token(authorization) or mg_staff
    staff = staff_for_key(session, key) if key else None
    if staff is None:
        raise Unauthorized("a trust-and-safety staff key is required (Authorization: Bearer mgs_…)")
    return staff


def admin_staff(staff: ModerationStaff = Depends(current_staff)) -> ModerationStaff:
    """Only admins change policies."""
    if staff.role != "admin":
        raise Forbidden("changing policies needs the admin role")
    return staff


# -- API ------------------------------------------------------------------------------------

@router.get("/v1/moderation/queue", response_model=list[ReviewTaskOut])
def list_queue(status: str | None = Query("open"), staff: ModerationStaff = Depends(current_staff),
               session: Session = Depends(get_session)) -> list[ReviewTaskOut]:
    """Review tasks, most urgent first."""
    return [ReviewTaskOut.model_validate(t) for t in repo.list_review_tasks(session, status=status or None)]


def _evidence_out(session: Session, evidence_id: str | None) -> EvidenceOut | None:
    evidence = repo.evidence(session, evidence_id) if evidence_id else None
    if evidence is None:
        return None
    out = EvidenceOut.model_validate(evidence)
    out.manifest_intact = verify_manifest(evidence)
    return out


@router.get("/v1/moderation/queue/{task_id}", response_model=ReviewTaskDetail)
def get_task(task_id: str, staff: ModerationStaff = Depends(current_staff),
             session: Session = Depends(get_session)) -> ReviewTaskDetail:
    """One task with its record and evidence metadata."""
    task = repo.review_task(session, task_id)
    if task is None:
        raise NotFound(f"review task {task_id} not found")
    record = repo.record(session, task.record_id)
    return ReviewTaskDetail(task=ReviewTaskOut.model_validate(task),
                            record=RecordOut.model_validate(record) if record else None,
                            evidence=_evidence_out(session, task.evidence_id))


@router.post("/v1/moderation/queue/{task_id}/resolve", response_model=ReviewTaskOut)
def resolve_task(task_id: str, body: ResolveIn, staff: ModerationStaff = Depends(current_staff),
                 session: Session = Depends(get_session)) -> ReviewTaskOut:
    """Close a task: `reported` files the report, `dismissed` marks a false positive."""
    task = resolve_review(session, task_id=task_id, staff_id=staff.id, resolution=body.resolution,
                          note=body.note, release=body.release_hold)
    return ReviewTaskOut.model_validate(task)


@router.get("/v1/moderation/records", response_model=list[RecordOut])
def list_records(account_id: str | None = None, model_id: str | None = None,
                 request_id: str | None = None, decision: str | None = None,
                 stage: str | None = None, limit: int = Query(100, ge=1, le=1000),
                 staff: ModerationStaff = Depends(current_staff),
                 session: Session = Depends(get_session)) -> list[RecordOut]:
    """Moderation records, newest first."""
    if request_id:
        rows = repo.records_for_request(session, request_id)
    else:
        rows = repo.list_records(session, account_id=account_id, model_id=model_id,
                                 decision=decision, stage=stage, limit=limit)
    return [RecordOut.model_validate(r) for r in rows]


@router.get("/v1/moderation/holds", response_model=list[HoldOut])
def list_holds(status: str | None = Query("active"), staff: ModerationStaff = Depends(current_staff),
               session: Session = Depends(get_session)) -> list[HoldOut]:
    """Account holds."""
    return [HoldOut.model_validate(h) for h in repo.list_holds(session, status=status or None)]


@router.post("/v1/moderation/holds/{account_id}/release", response_model=HoldOut)
def release(account_id: str, body: ReleaseIn, staff: ModerationStaff = Depends(current_staff),
            session: Session = Depends(get_session)) -> HoldOut:
    """Lift an account's hold after review."""
    return HoldOut.model_validate(release_hold(session, account_id=account_id, staff_id=staff.id,
                                               note=body.note))


@router.put("/v1/moderation/policies/accounts/{account_id}", response_model=PolicyOut)
def put_account_policy(account_id: str, body: AccountPolicyIn, staff: ModerationStaff = Depends(admin_staff),
                       session: Session = Depends(get_session)) -> PolicyOut:
    """Set an account's layer: verification, adult-content opt-in, overrides, custom terms."""
    row = set_account_policy(session, account_id=account_id, changed_by=staff.id, **body.model_dump())
    return PolicyOut.model_validate(row)


@router.put("/v1/moderation/policies/models/{model_id}", response_model=PolicyOut)
def put_model_policy(model_id: str, body: ModelPolicyIn, staff: ModerationStaff = Depends(admin_staff),
                     session: Session = Depends(get_session)) -> PolicyOut:
    """Set the platform's floor on a model (licence obligations)."""
    row = set_model_policy(session, model_id=model_id, source="platform", changed_by=staff.id,
                           **body.model_dump())
    return PolicyOut.model_validate(row)


@router.get("/v1/moderation/stats", response_model=list[StatsRow])
def stats(by: str = Query("model", pattern="^(model|account)$"), since: dt.datetime | None = None,
          until: dt.datetime | None = None, staff: ModerationStaff = Depends(current_staff),
          session: Session = Depends(get_session)) -> list[StatsRow]:
    """Checks, blocks and the NSFW share of outputs per model or per account."""
    return [StatsRow(**row) for row in moderation_stats(session, by=by, since=since, until=until)]


# -- review page ----------------------------------------------------------------------------

@router.get("/moderation/login", response_class=HTMLResponse, include_in_schema=False)
def login_page() -> HTMLResponse:
    """The staff sign-in form."""
    return HTMLResponse(_templates.get_template("login.html").render(error=None))


@router.post("/moderation/login", include_in_schema=False)
def login(request: Request, key: str = Form(...), session: Session = Depends(get_session)):
    """Exchange a staff key for a session cookie."""
    if staff_for_key(session, key.strip()) is None:
        return HTMLResponse(_templates.get_template("login.html").render(error="That key is not valid."),
                            status_code=401)
    response = RedirectResponse("/moderation/review", status_code=303)
    response.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/", max_age=8 * 3600)
    return response


@router.get("/moderation/review", response_class=HTMLResponse, include_in_schema=False)
def review_page(staff: ModerationStaff = Depends(current_staff),
                session: Session = Depends(get_session)) -> HTMLResponse:
    """The review queue, holds and recent blocks: metadata only, never content."""
    tasks = repo.list_review_tasks(session, status="open")
    evidence = {t.id: _evidence_out(session, t.evidence_id) for t in tasks}
    expires, signature = sign(f"moderation-form:{staff.id}", 3600)
    html = _templates.get_template("review.html").render(
        staff=staff, tasks=tasks, evidence=evidence, holds=repo.list_holds(session, status="active"),
        blocked=repo.list_records(session, decision="blocked", limit=50),
        stats=moderation_stats(session, by="model")[:50], csrf=f"{expires}.{signature}")
    return HTMLResponse(html)


@router.post("/moderation/review/tasks/{task_id}", include_in_schema=False)
def review_page_resolve(task_id: str, resolution: str = Form(...), note: str = Form(""),
                        release_hold: bool = Form(False), csrf: str = Form(...),
                        staff: ModerationStaff = Depends(current_staff),
                        session: Session = Depends(get_session)) -> RedirectResponse:
    """The page's resolve form."""
    expires, _, signature = csrf.partition(".")
    if not expires.isdigit() or not verify(f"moderation-form:{staff.id}", int(expires), signature):
        raise Forbidden("the form has expired; reload the page")
    resolve_review(session, task_id=task_id, staff_id=staff.id, resolution=resolution, note=note,
                   release=release_hold)
    return RedirectResponse("/moderation/review", status_code=303)

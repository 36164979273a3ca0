"""Portal pages: sign-in, dashboard, models and uploads, usage, members, keys, account."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import AppError, Forbidden, NotFound
from partners import members, service, uploads
from partners import repository as repo
from partners.member_endpoints import invite_url
from partners.portal.charts import WIDE, usage_charts
from partners.portal.web import (
    LOGIN_CSRF_COOKIE,
    STATIC,
    PortalRoute,
    PortalUser,
    clear_session_cookie,
    login_csrf_ok,
    portal_user,
    render,
    role,
    safe_next,
    secure_cookies,
    set_session_cookie,
    validated,
)
from partners.schemas import DeploymentCreate, ModelCreate

router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)
STATIC_FILES = {"htmx.min.js": "text/javascript", "portal.js": "text/javascript", "portal.css": "text/css",
                "htmx.LICENSE.txt": "text/plain"}
NOTICES = {
    "uploaded": "Package uploaded and validated: a new version is ready to deploy.",
    "model": "Model created. Upload a package to make its first version.",
    "deployed": "Deployed. Replicas start when the first request arrives (or now, with min replicas above 0).",
    "rollout": "Rolled out. New requests go to the new version; the old replicas drain and stop.",
    "rollback": "Rolled back to the previous deployment.",
    "scaled": "Scaling updated.",
    "stopped": "Deployment stopped; new requests to this model are refused.",
    "password": "Password changed. Your other sessions were signed out.",
    "revoked": "Key revoked.",
    "removed": "Member removed; their sessions ended.",
    "role": "Role updated.",
}


def notice(request: Request) -> str | None:
    """A fixed message chosen by the `notice` query key (never reflected text)."""
    return NOTICES.get(request.query_params.get("notice", ""))


def _login_page(request: Request, *, status: int = 200, **context: object) -> HTMLResponse:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(request, context.pop("template", "login.html"), status_code=status,  # type: ignore[arg-type]
                      login_csrf=token, **context)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=secure_cookies(request), path="/portal")
    return response


# -- static files (vendored htmx, the portal's script and stylesheet) --------------------------

@router.get("/static/{name}")
def static(name: str) -> Response:
    """A whitelisted static file, cached for an hour."""
    if name not in STATIC_FILES:
        raise NotFound("no such file")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=3600"})


# -- signing in and out --------------------------------------------------------------------------

@router.get("/login")
def login_page(request: Request, next: str = "/portal") -> HTMLResponse:
    """The sign-in form."""
    return _login_page(request, next=safe_next(next))


@router.post("/login")
def login(
    request: Request, email: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
    next: str = Form("/portal"), session: Session = Depends(get_session),
) -> Response:
    """Check the password and open a session; failures count towards a short lock-out."""
    if not login_csrf_ok(request, csrf_token):
        return _login_page(request, status=403, next=safe_next(next), email=email,
                           error="The sign-in form expired. Please try again.")
    try:
        new = members.sign_in(session, email=email, password=password,
                              user_agent=request.headers.get("user-agent", ""))
    except (members.SignInFailed, members.LockedOut) as exc:
        # Answered, not raised: the failed-attempt counter must be committed.
        return _login_page(request, status=exc.status_code, next=safe_next(next), email=email, error=exc.message)
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(request, response, new.token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/portal")
    return response


@router.post("/logout")
def logout(request: Request, user: PortalUser = Depends(portal_user),
           session: Session = Depends(get_session)) -> Response:
    """End this session."""
    members.sign_out(session, request.cookies.get("mg_portal"))
    response = RedirectResponse("/portal/login", status_code=303)
    clear_session_cookie(request, response)
    return response


@router.get("/invite/{token}")
def invite_page(request: Request, token: str, session: Session = Depends(get_session)) -> HTMLResponse:
    """Where an invited member chooses a password."""
    member = members.invited_member(session, token)
    return _login_page(request, template="invite.html", member=member, token=token)


@router.post("/invite/{token}")
def accept_invite(request: Request, token: str, password: str = Form(""), csrf_token: str = Form(""),
                  session: Session = Depends(get_session)) -> Response:
    """Set the password and sign in."""
    member = members.invited_member(session, token)
    if not login_csrf_ok(request, csrf_token):
        return _login_page(request, template="invite.html", status=403, member=member, token=token,
                           error="The form expired. Please try again.")
    try:
        members.accept_invite(session, token, password=password)
    except AppError as exc:
        return _login_page(request, template="invite.html", status=exc.status_code, member=member,
                           token=token, error=exc.message)
    new = members.sign_in(session, email=member.email, password=password,
                          user_agent=request.headers.get("user-agent", ""))
    response = RedirectResponse("/portal", status_code=303)
    set_session_cookie(request, response, new.token)
    return response


# -- dashboard ---------------------------------------------------------------------------------

@router.get("")
def dashboard(request: Request, user: PortalUser = Depends(portal_user),
              session: Session = Depends(get_session)) -> HTMLResponse:
    """Models, live deployments, the last day's requests and recent changes."""
    partner = user.partner
    models = repo.models_of(session, partner.id)
    slugs = {m.id: m.slug for m in models}
    active = [d for d in repo.deployments_of(session, partner.id) if d.status == "active"]
    health = service.deployment_health(session, active)
    stats = service.usage_stats(session, partner, range_="24h")
    requests_chart, latency_chart, totals = usage_charts(stats)
    events = repo.deployment_events(session, partner_id=partner.id, limit=8)
    return render(request, "dashboard.html", models=models, slugs=slugs, active=active, health=health,
                  requests_chart=requests_chart, latency_chart=latency_chart, totals=totals,
                  day_requests=sum(t["requests"] for t in totals),
                  day_failed=sum(t["failed"] for t in totals), events=events,
                  recent=repo.recent_requests(session, partner.id, limit=8), notice=notice(request))


# -- models, versions, uploads ---------------------------------------------------------------

@router.get("/models")
def models_page(request: Request, user: PortalUser = Depends(portal_user),
                session: Session = Depends(get_session)) -> HTMLResponse:
    """The partner's models, and a form for a new one."""
    models = repo.models_of(session, user.partner.id)
    versions = {m.id: len(repo.versions_of(session, m.id)) for m in models}
    active = {d.model_id: d for d in repo.deployments_of(session, user.partner.id) if d.status == "active"}
    health = service.deployment_health(session, list(active.values()))
    return render(request, "models.html", models=models, versions=versions, active=active, health=health)


@router.post("/models")
def create_model(
    request: Request, slug: str = Form(...), title: str = Form(""), description: str = Form(""),
    user: PortalUser = Depends(role("developer")), session: Session = Depends(get_session),
) -> Response:
    """Register a model."""
    body = validated(ModelCreate, slug=slug.strip().lower(), title=title.strip(), description=description.strip())
    model = service.create_model(session, user.partner, slug=body.slug, title=body.title,
                                 description=body.description)
    return RedirectResponse(f"/portal/models/{model.slug}?notice=model", status_code=303)


@router.get("/models/{slug}")
def model_page(request: Request, slug: str, user: PortalUser = Depends(portal_user),
               session: Session = Depends(get_session)) -> HTMLResponse:
    """A model: its versions, the upload widget, and how it is deployed."""
    model = service.get_model(session, user.partner, slug)
    versions = repo.versions_of(session, model.id)[::-1]
    deployments = repo.deployments_of_model(session, model.id)
    active = next((d for d in deployments if d.status == "active"), None)
    recent_uploads = [u for u in repo.uploads_of(session, user.partner.id) if u.model_id == model.id][:5]
    return render(request, "model.html", model=model, versions=versions, deployments=deployments[:10],
                  active=active, health=service.deployment_health(session, deployments[:10]),
                  uploads=recent_uploads, offsets={u.id: uploads.current_offset(u) for u in recent_uploads},
                  notice=notice(request))


@router.post("/models/{slug}/deploy")
def deploy(
    request: Request, slug: str, version: int = Form(...), pool: str = Form("shared"),
    min_replicas: int = Form(0), max_replicas: int = Form(1), concurrency: int = Form(1),
    keep_alive_s: int = Form(300), user: PortalUser = Depends(role("developer")),
    session: Session = Depends(get_session),
) -> Response:
    """Deploy a version with the given scaling (it replaces the model's active deployment)."""
    body = validated(DeploymentCreate, model=slug, version=version, pool=pool, min_replicas=min_replicas,
                            max_replicas=max_replicas, concurrency=concurrency, keep_alive_s=keep_alive_s)
    deployment = service.create_deployment(
        session, user.partner, model_slug=slug, version=body.version, pool=body.pool,
        min_replicas=body.min_replicas, max_replicas=body.max_replicas, concurrency=body.concurrency,
        keep_alive_s=body.keep_alive_s, actor=user.actor.name)
    return RedirectResponse(f"/portal/deployments/{deployment.id}?notice=deployed", status_code=303)


# -- usage -----------------------------------------------------------------------------------

@router.get("/usage")
def usage_page(request: Request, range: str = Query("7d", pattern="^(24h|7d|30d)$"),
               model: str | None = Query(None), user: PortalUser = Depends(portal_user),
               session: Session = Depends(get_session)) -> HTMLResponse:
    """Request counts and latency charts, per model or for all."""
    model = model or None
    stats = service.usage_stats(session, user.partner, range_=range, model_slug=model)
    requests_chart, latency_chart, totals = usage_charts(stats, width=WIDE)
    return render(request, "usage.html", range=range, model=model, requests_chart=requests_chart,
                  latency_chart=latency_chart, totals=totals, models=repo.models_of(session, user.partner.id))


# -- members, keys, account ------------------------------------------------------------------

@router.get("/members")
def members_page(request: Request, user: PortalUser = Depends(portal_user),
                 session: Session = Depends(get_session)) -> HTMLResponse:
    """The organisation's members."""
    return render(request, "members.html", members=repo.members_of(session, user.partner.id),
                  roles=members.MEMBER_ROLES, notice=notice(request))


@router.post("/members")
def add_member(
    request: Request, email: str = Form(...), name: str = Form(""), role_: str = Form("developer", alias="role"),
    user: PortalUser = Depends(role("admin")), session: Session = Depends(get_session),
) -> HTMLResponse:
    """Invite a member; the single-use link is shown once."""
    if role_ == "owner" and user.member.role != "owner":
        raise Forbidden("only an owner can add another owner")
    member, token = members.create_member(session, user.partner, email=email, name=name, role=role_)
    return render(request, "members.html", members=repo.members_of(session, user.partner.id),
                  roles=members.MEMBER_ROLES, invited=member, invite_link=invite_url(token or ""))


@router.post("/members/{member_id}/role")
def change_role(request: Request, member_id: str, role_: str = Form(..., alias="role"),
                user: PortalUser = Depends(role("admin")), session: Session = Depends(get_session)) -> Response:
    """Change a member's role."""
    members.update_member(session, user.partner, member_id, role=role_, by=user.member)
    return RedirectResponse("/portal/members?notice=role", status_code=303)


@router.post("/members/{member_id}/remove")
def remove_member(request: Request, member_id: str, user: PortalUser = Depends(role("admin")),
                  session: Session = Depends(get_session)) -> Response:
    """Disable a member and end their sessions."""
    members.remove_member(session, user.partner, member_id, by=user.member)
    return RedirectResponse("/portal/members?notice=removed", status_code=303)


@router.get("/keys")
def keys_page(request: Request, user: PortalUser = Depends(role("admin")),
              session: Session = Depends(get_session)) -> HTMLResponse:
    """API keys for CI and scripts."""
    return render(request, "keys.html", keys=repo.keys_of(session, user.partner.id), notice=notice(request))


@router.post("/keys")
def create_key(request: Request, name: str = Form("ci"), user: PortalUser = Depends(role("admin")),
               session: Session = Depends(get_session)) -> HTMLResponse:
    """A new API key, shown once."""
    secret = service.issue_key(session, partner_id=user.partner.id, name=name.strip()[:200] or "ci")
    return render(request, "keys.html", keys=repo.keys_of(session, user.partner.id), new_key=secret)


@router.post("/keys/{key_id}/revoke")
def revoke_key(request: Request, key_id: str, user: PortalUser = Depends(role("admin")),
               session: Session = Depends(get_session)) -> Response:
    """Revoke a key."""
    service.revoke_key(session, user.partner, key_id)
    return RedirectResponse("/portal/keys?notice=revoked", status_code=303)


@router.get("/account")
def account_page(request: Request, user: PortalUser = Depends(portal_user)) -> HTMLResponse:
    """The member's own account."""
    return render(request, "account.html", notice=notice(request))


@router.post("/account/password")
def change_password(request: Request, current: str = Form(""), new: str = Form(""),
                    user: PortalUser = Depends(portal_user), session: Session = Depends(get_session)) -> Response:
    """Change one's password; other sessions end, this one gets a fresh token."""
    try:
        members.change_password(session, user.member, current=current, new=new)
    except AppError as exc:
        return render(request, "account.html", status_code=exc.status_code, error=exc.message)
    new_session = members.sign_in(session, email=user.member.email, password=new,
                                  user_agent=request.headers.get("user-agent", ""))
    response = RedirectResponse("/portal/account?notice=password", status_code=303)
    set_session_cookie(request, response, new_session.token)
    return response

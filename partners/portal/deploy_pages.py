"""Portal pages for deployments: live status, scaling, rollout and rollback, logs, requests."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import NotFound
from partners import repository as repo
from partners import service
from partners.models import Deployment, Partner
from partners.portal.pages import notice
from partners.portal.web import PortalRoute, PortalUser, portal_user, render, role, validated
from partners.schemas import DeploymentUpdate, Rollout

router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)
LOG_PAGE = 300


def _slugs(session: Session, partner: Partner) -> dict[str, str]:
    return {m.id: m.slug for m in repo.models_of(session, partner.id)}


@router.get("/deployments")
def deployments_page(request: Request, user: PortalUser = Depends(portal_user),
                     session: Session = Depends(get_session)) -> HTMLResponse:
    """Every deployment with its live state; the table refreshes itself."""
    return render(request, "deployments.html", **_rows_context(session, user.partner))


def _rows_context(session: Session, partner: Partner) -> dict:
    deployments = repo.deployments_of(session, partner.id)[::-1]
    return {"deployments": deployments, "slugs": _slugs(session, partner),
            "health": service.deployment_health(session, deployments)}


@router.get("/deployments/rows")
def deployment_rows(request: Request, user: PortalUser = Depends(portal_user),
                    session: Session = Depends(get_session)) -> HTMLResponse:
    """The deployments table body (polled by htmx)."""
    return render(request, "_deployment_rows.html", **_rows_context(session, user.partner))


def _deployment_context(session: Session, partner: Partner, deployment: Deployment) -> dict:
    replicas = repo.replicas_of(session, [deployment.id], include_stopped=True)[:20]
    previous = repo.previous_deployment(session, deployment.model_id, deployment.id)
    return {
        "d": deployment, "slug": _slugs(session, partner)[deployment.model_id],
        "health": service.deployment_health(session, [deployment])[deployment.id],
        "replicas": replicas, "previous": previous if deployment.status == "active" else None,
    }


@router.get("/deployments/{deployment_id}")
def deployment_page(request: Request, deployment_id: str, replica: str | None = Query(None),
                    request_id: str | None = Query(None), user: PortalUser = Depends(portal_user),
                    session: Session = Depends(get_session)) -> HTMLResponse:
    """One deployment: status, actions, history, recent requests and logs."""
    deployment = service.get_deployment(session, user.partner, deployment_id)
    versions = repo.versions_of(session, deployment.model_id)[::-1]
    lines = repo.deployment_logs(session, deployment.id, limit=LOG_PAGE, replica_id=replica or None,
                                 request_id=request_id or None)
    return render(
        request, "deployment.html", **_deployment_context(session, user.partner, deployment),
        versions=versions, events=repo.deployment_events(session, model_id=deployment.model_id, limit=15),
        recent=repo.recent_requests(session, user.partner.id, deployment_id=deployment.id, limit=10),
        lines=lines, after=lines[-1].seq if lines else 0, replica=replica or "", request_id=request_id or "",
        notice=notice(request),
    )


@router.get("/deployments/{deployment_id}/status")
def deployment_status(request: Request, deployment_id: str, user: PortalUser = Depends(portal_user),
                      session: Session = Depends(get_session)) -> HTMLResponse:
    """The live status panel (polled by htmx)."""
    deployment = service.get_deployment(session, user.partner, deployment_id)
    return render(request, "_deployment_status.html", **_deployment_context(session, user.partner, deployment))


@router.get("/deployments/{deployment_id}/logs")
def deployment_logs(request: Request, deployment_id: str, after: int = Query(0, ge=0, le=2**63 - 1),
                    replica: str | None = Query(None), request_id: str | None = Query(None),
                    user: PortalUser = Depends(portal_user), session: Session = Depends(get_session)) -> HTMLResponse:
    """New log lines after `after`, plus an updated poller (polled by htmx)."""
    deployment = service.get_deployment(session, user.partner, deployment_id)
    lines = repo.deployment_logs(session, deployment.id, after=after, limit=LOG_PAGE,
                                 replica_id=replica or None, request_id=request_id or None)
    return render(request, "_log_lines.html", d=deployment, lines=lines,
                  after=lines[-1].seq if lines else after, replica=replica or "",
                  request_id=request_id or "", oob=True)


@router.post("/deployments/{deployment_id}/scale")
def scale(request: Request, deployment_id: str, min_replicas: int = Form(...), max_replicas: int = Form(...),
          concurrency: int = Form(...), keep_alive_s: int = Form(...),
          user: PortalUser = Depends(role("developer")), session: Session = Depends(get_session)) -> Response:
    """Change the active deployment's scaling."""
    body = validated(DeploymentUpdate, min_replicas=min_replicas, max_replicas=max_replicas,
                     concurrency=concurrency, keep_alive_s=keep_alive_s)
    service.update_deployment(session, user.partner, deployment_id, actor=user.actor.name,
                              **body.model_dump(exclude_none=True))
    return RedirectResponse(f"/portal/deployments/{deployment_id}?notice=scaled", status_code=303)


@router.post("/deployments/{deployment_id}/rollout")
def rollout(request: Request, deployment_id: str, version: int = Form(...),
            user: PortalUser = Depends(role("developer")), session: Session = Depends(get_session)) -> Response:
    """Roll the model out to another version."""
    body = validated(Rollout, version=version)
    new = service.rollout(session, user.partner, deployment_id, version=body.version, actor=user.actor.name)
    return RedirectResponse(f"/portal/deployments/{new.id}?notice=rollout", status_code=303)


@router.post("/deployments/{deployment_id}/rollback")
def rollback(request: Request, deployment_id: str, user: PortalUser = Depends(role("developer")),
             session: Session = Depends(get_session)) -> Response:
    """Bring back the previous deployment."""
    previous = service.rollback(session, user.partner, deployment_id, actor=user.actor.name)
    return RedirectResponse(f"/portal/deployments/{previous.id}?notice=rollback", status_code=303)


@router.post("/deployments/{deployment_id}/stop")
def stop(request: Request, deployment_id: str, user: PortalUser = Depends(role("developer")),
         session: Session = Depends(get_session)) -> Response:
    """Stop the deployment."""
    service.stop_deployment(session, user.partner, deployment_id, actor=user.actor.name)
    return RedirectResponse(f"/portal/deployments/{deployment_id}?notice=stopped", status_code=303)


@router.get("/requests")
def find_request(id: str = Query(""), user: PortalUser = Depends(portal_user)) -> Response:
    """Jump to a request by id (the search box)."""
    return RedirectResponse(f"/portal/requests/{id.strip()}", status_code=303)


@router.get("/requests/{request_id}")
def request_page(request: Request, request_id: str, user: PortalUser = Depends(portal_user),
                 session: Session = Depends(get_session)) -> HTMLResponse:
    """One customer request to the partner's model: status, timing, error and its log lines."""
    req = repo.partner_request(session, user.partner.id, request_id)
    if req is None:
        raise NotFound(f"No request {request_id!r} was made to your models.")
    lines = repo.request_logs(session, request_id, [req["deployment_id"]])
    return render(request, "request.html", req=req, lines=lines)

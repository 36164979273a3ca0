"""The partner API (`/v1/partner`): models, versions, deployments, logs and usage."""

from __future__ import annotations

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from kit.db import get_session
from kit.errors import InvalidInput, NotFound
from kit.web import router as make_router
from partners import repository as repo
from partners import service
from partners.auth import Actor, current_actor, current_partner
from partners.body_stream import RequestBody
from partners.member_endpoints import router as org_router
from partners.models import Deployment, Partner
from partners.schemas import (
    DeploymentCreate,
    DeploymentDetail,
    DeploymentEventOut,
    DeploymentOut,
    DeploymentUpdate,
    LogLineOut,
    LogPage,
    ModelCreate,
    ModelOut,
    ReplicaOut,
    RequestLogs,
    Rollout,
    UsageOut,
    VersionOut,
)
from partners.upload_endpoints import router as upload_router

router = make_router(prefix="/v1/partner", tags=["partner"])

MAX_UPLOAD_BYTES = 64 * 1024**3


@router.post("/models", response_model=ModelOut, status_code=201)
def create_model(
    body: ModelCreate, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> ModelOut:
    """Register a new model in the partner's namespace."""
    model = service.create_model(session, partner, slug=body.slug, title=body.title, description=body.description)
    return ModelOut.model_validate(model)


@router.get("/models", response_model=list[ModelOut])
def list_models(partner: Partner = Depends(current_partner), session: Session = Depends(get_session)) -> list[ModelOut]:
    """The partner's models."""
    return [ModelOut.model_validate(m) for m in repo.models_of(session, partner.id)]


@router.post("/models/{model_slug}/versions", response_model=VersionOut, status_code=201,
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}, "required": True}})
async def upload_version(
    model_slug: str, request: Request, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> VersionOut:
    """Upload a model package (OCI archive) as the model's next version.

    The body is validated and encrypted into the artifact store as it streams, in one pass:
    it is never written to disk in plaintext, and a rejected package leaves nothing stored.
    """
    model = await run_in_threadpool(service.get_model, session, partner, model_slug)
    body = RequestBody(request.stream(), limit=MAX_UPLOAD_BYTES)
    if not await body.start():
        raise InvalidInput("the request body is empty; send the package archive as the body")
    version = await run_in_threadpool(service.create_version_from_stream, session, partner, model, body)
    return VersionOut.model_validate(version)


@router.get("/models/{model_slug}/versions", response_model=list[VersionOut])
def list_versions(
    model_slug: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> list[VersionOut]:
    """The model's uploaded versions."""
    model = service.get_model(session, partner, model_slug)
    return [VersionOut.model_validate(v) for v in repo.versions_of(session, model.id)]


@router.get("/models/{model_slug}", response_model=ModelOut)
def get_model(
    model_slug: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> ModelOut:
    """One of the partner's models."""
    return ModelOut.model_validate(service.get_model(session, partner, model_slug))


@router.post("/deployments", response_model=DeploymentDetail, status_code=201)
def create_deployment(
    body: DeploymentCreate, actor: Actor = Depends(current_actor), session: Session = Depends(get_session)
) -> DeploymentDetail:
    """Deploy a version of a model; it replaces the model's current deployment."""
    deployment = service.create_deployment(
        session, actor.partner, model_slug=body.model, version=body.version, pool=body.pool,
        min_replicas=body.min_replicas, max_replicas=body.max_replicas,
        concurrency=body.concurrency, keep_alive_s=body.keep_alive_s, actor=actor.name,
    )
    return details(session, actor.partner, [deployment])[0]


@router.get("/deployments", response_model=list[DeploymentDetail])
def list_deployments(
    status: str | None = Query(default=None, description="active, replaced, rolled_back or stopped"),
    model: str | None = Query(default=None, description="Only this model's (slug)"),
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> list[DeploymentDetail]:
    """The partner's deployments, newest first, with their live state."""
    deployments = repo.deployments_of(session, partner.id)[::-1]
    if model is not None:
        model_id = service.get_model(session, partner, model).id
        deployments = [d for d in deployments if d.model_id == model_id]
    if status is not None:
        deployments = [d for d in deployments if d.status == status]
    return details(session, partner, deployments)


@router.get("/deployments/{deployment_id}", response_model=DeploymentDetail)
def get_deployment(
    deployment_id: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> DeploymentDetail:
    """One deployment with its live state."""
    return details(session, partner, [service.get_deployment(session, partner, deployment_id)])[0]


@router.patch("/deployments/{deployment_id}", response_model=DeploymentDetail)
def update_deployment(
    deployment_id: str, body: DeploymentUpdate, actor: Actor = Depends(current_actor),
    session: Session = Depends(get_session),
) -> DeploymentDetail:
    """Change min/max replicas, per-replica concurrency or keep-alive of the active deployment."""
    deployment = service.update_deployment(session, actor.partner, deployment_id, actor=actor.name,
                                           **body.model_dump(exclude_none=True))
    return details(session, actor.partner, [deployment])[0]


@router.post("/deployments/{deployment_id}/rollout", response_model=DeploymentDetail, status_code=201)
def rollout(
    deployment_id: str, body: Rollout, actor: Actor = Depends(current_actor),
    session: Session = Depends(get_session),
) -> DeploymentDetail:
    """Roll the model out to another version; returns the new deployment that now serves it."""
    deployment = service.rollout(session, actor.partner, deployment_id, version=body.version, actor=actor.name)
    return details(session, actor.partner, [deployment])[0]


@router.post("/deployments/{deployment_id}/rollback", response_model=DeploymentDetail)
def rollback(
    deployment_id: str, actor: Actor = Depends(current_actor), session: Session = Depends(get_session),
) -> DeploymentDetail:
    """Bring back the deployment this one replaced; returns it, serving again."""
    deployment = service.rollback(session, actor.partner, deployment_id, actor=actor.name)
    return details(session, actor.partner, [deployment])[0]


@router.delete("/deployments/{deployment_id}", response_model=DeploymentDetail)
def stop_deployment(
    deployment_id: str, actor: Actor = Depends(current_actor), session: Session = Depends(get_session),
) -> DeploymentDetail:
    """Stop serving the model from this deployment (new requests are refused)."""
    deployment = service.stop_deployment(session, actor.partner, deployment_id, actor=actor.name)
    return details(session, actor.partner, [deployment])[0]


@router.get("/deployments/{deployment_id}/events", response_model=list[DeploymentEventOut])
def deployment_events(
    deployment_id: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> list[DeploymentEventOut]:
    """The model's deployment history (created, scaled, rollout, rollback, stopped), newest first."""
    deployment = service.get_deployment(session, partner, deployment_id)
    events = repo.deployment_events(session, model_id=deployment.model_id, limit=100)
    return [DeploymentEventOut.model_validate(e) for e in events]


@router.get("/deployments/{deployment_id}/replicas", response_model=list[ReplicaOut])
def deployment_replicas(
    deployment_id: str, include_stopped: bool = False, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> list[ReplicaOut]:
    """The deployment's replicas as their workers last reported them."""
    deployment = service.get_deployment(session, partner, deployment_id)
    rows = repo.replicas_of(session, [deployment.id], include_stopped=include_stopped)
    return [ReplicaOut.model_validate(r) for r in rows]


@router.get("/deployments/{deployment_id}/logs", response_model=LogPage)
def deployment_logs(
    deployment_id: str,
    after: int = Query(default=0, ge=0, le=2**63 - 1, description="Only lines after this sequence number"),
    limit: int = Query(default=200, ge=1, le=1000),
    replica: str | None = Query(default=None, description="Only this replica's lines"),
    request: str | None = Query(default=None, alias="request_id", description="Only this request's lines"),
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> LogPage:
    """Log lines of the deployment's replicas and requests; poll with `after` to follow."""
    deployment = service.get_deployment(session, partner, deployment_id)
    lines = repo.deployment_logs(session, deployment.id, after=after, limit=limit, replica_id=replica,
                                 request_id=request)
    return LogPage(lines=[LogLineOut.model_validate(line) for line in lines],
                   next_after=lines[-1].seq if lines else after)


@router.get("/requests/{request_id}/logs", response_model=RequestLogs)
def request_logs(
    request_id: str, after: int = Query(default=0, ge=0, le=2**63 - 1),
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> RequestLogs:
    """One customer request to the partner's model: its status, timing and log lines."""
    req = repo.partner_request(session, partner.id, request_id)
    if req is None:
        raise NotFound(f"no request {request_id!r} for your models")
    lines = repo.request_logs(session, request_id, [req["deployment_id"]], after=after)
    return RequestLogs(
        request_id=req["id"], model=f"{partner.slug}/{req['slug']}", deployment_id=req["deployment_id"],
        status=req["status"], run_ms=req["run_ms"], created_at=req["created_at"], error=req["error"],
        lines=[LogLineOut.model_validate(line) for line in lines],
        next_after=lines[-1].seq if lines else after,
    )


@router.get("/usage", response_model=UsageOut)
def usage(
    range: str = Query(default="7d", pattern="^(24h|7d|30d)$"),
    model: str | None = Query(default=None, description="Only this model (slug)"),
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> UsageOut:
    """Requests and run-time percentiles (p50, p95) per hour (24h) or day (7d, 30d) and model."""
    stats = service.usage_stats(session, partner, range_=range, model_slug=model)
    return UsageOut.model_validate(stats)


def details(session: Session, partner: Partner, deployments: list[Deployment]) -> list[DeploymentDetail]:
    """Deployments as the partner API shows them: model, version number and live state."""
    health = service.deployment_health(session, deployments)
    slugs = {m.id: m.slug for m in repo.models_of(session, partner.id)}
    return [
        DeploymentDetail(
            **DeploymentOut.model_validate(d).model_dump(), model=f"{partner.slug}/{slugs[d.model_id]}",
            version=d.version.number, state=health[d.id].state, last_error=health[d.id].last_error,
            replicas={"ready": health[d.id].ready, "starting": health[d.id].starting,
                      "failed": health[d.id].failed},
        )
        for d in deployments
    ]


# Uploads, members and keys live in modules of their own; one router serves them all.
router.include_router(upload_router)
router.include_router(org_router)

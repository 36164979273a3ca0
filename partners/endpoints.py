"""The partner API (`/v1/partner`): models, versions (package upload) and deployments."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from kit.db import get_session
from kit.errors import InvalidInput, PayloadTooLarge
from kit.settings import get_settings
from kit.web import router as make_router
from partners import repository as repo
from partners import service
from partners.auth import current_partner
from partners.models import Partner
from partners.schemas import DeploymentCreate, DeploymentOut, ModelCreate, ModelOut, VersionOut

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
    """Upload a model package (OCI archive) as the model's next version; streamed to disk."""
    model = await run_in_threadpool(service.get_model, session, partner, model_slug)
    incoming = get_settings().data_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=incoming, prefix="upload-")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise PayloadTooLarge(f"packages are limited to {MAX_UPLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise InvalidInput("the request body is empty; send the package archive as the body")
        version = await run_in_threadpool(
            service.create_version, session, partner, model, archive=Path(tmp),
            digest=digest.hexdigest(), size=size,
        )
        return VersionOut.model_validate(version)
    finally:
        Path(tmp).unlink(missing_ok=True)


@router.get("/models/{model_slug}/versions", response_model=list[VersionOut])
def list_versions(
    model_slug: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> list[VersionOut]:
    """The model's uploaded versions."""
    model = service.get_model(session, partner, model_slug)
    return [VersionOut.model_validate(v) for v in repo.versions_of(session, model.id)]


@router.post("/deployments", response_model=DeploymentOut, status_code=201)
def create_deployment(
    body: DeploymentCreate, partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> DeploymentOut:
    """Deploy a version of a model; it replaces the model's current deployment."""
    deployment = service.create_deployment(
        session, partner, model_slug=body.model, version=body.version, pool=body.pool,
        min_replicas=body.min_replicas, max_replicas=body.max_replicas,
        concurrency=body.concurrency, keep_alive_s=body.keep_alive_s,
    )
    return DeploymentOut.model_validate(deployment)


@router.get("/deployments", response_model=list[DeploymentOut])
def list_deployments(
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session)
) -> list[DeploymentOut]:
    """The partner's deployments."""
    return [DeploymentOut.model_validate(d) for d in repo.deployments_of(session, partner.id)]

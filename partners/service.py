"""Partner use cases: organisations, keys, models, versions (uploads) and deployments."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kit.errors import Conflict, InvalidInput, NotFound
from kit.keys import key_digest, new_key
from kit.storage import get_storage
from partners import repository as repo
from partners.models import Deployment, Model, ModelVersion, Partner, PartnerKey
from partners.packaging import PackageLimits, validate_stream


def create_partner(session: Session, *, slug: str, name: str) -> tuple[Partner, str]:
    """A partner organisation and its first API key (returned once, in plain text)."""
    if repo.partner_by_slug(session, slug) is not None:
        raise Conflict(f"a partner named {slug!r} already exists")
    partner = Partner(slug=slug, name=name)
    session.add(partner)
    session.flush()
    return partner, issue_key(session, partner_id=partner.id)


def issue_key(session: Session, *, partner_id: str, name: str = "default") -> str:
    """A new partner API key; only its digest is stored."""
    key = new_key("mgp")
    session.add(PartnerKey(partner_id=partner_id, name=name, digest=key_digest(key)))
    session.flush()
    return key


def create_model(session: Session, partner: Partner, *, slug: str, title: str = "", description: str = "") -> Model:
    """Register a model under the partner's namespace."""
    if repo.partner_model(session, partner.id, slug) is not None:
        raise Conflict(f"model {partner.slug}/{slug} already exists")
    model = Model(partner_id=partner.id, slug=slug, title=title or slug, description=description)
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create won the race
        raise Conflict(f"model {partner.slug}/{slug} already exists") from exc
    return model


def get_model(session: Session, partner: Partner, slug: str) -> Model:
    """One of the partner's own models; another partner's is not found."""
    model = repo.partner_model(session, partner.id, slug)
    if model is None:
        raise NotFound(f"no model {slug!r}")
    return model


def create_version(
    session: Session, partner: Partner, model: Model, *, archive: Path, digest: str, size: int,
    limits: PackageLimits | None = None,
) -> ModelVersion:
    """Validate an uploaded package and store it as the model's next version."""
    with open(archive, "rb") as f:
        package = validate_stream(f, limits or PackageLimits())
    key = artifact_key(partner.id, digest)
    storage = get_storage()
    if not storage.exists(key):
        storage.put_file(key, archive)
    version = ModelVersion(
        model_id=model.id,
        number=repo.next_version_number(session, model.id),
        artifact_digest=f"sha256:{digest}",
        artifact_size=size,
        manifest=package.manifest.to_dict(),
    )
    session.add(version)
    session.flush()
    return version


def artifact_key(partner_id: str, digest: str) -> str:
    """Where a partner's package archive lives in storage."""
    return f"artifacts/{partner_id}/{digest.removeprefix('sha256:')}"


def create_deployment(
    session: Session, partner: Partner, *, model_slug: str, version: int | None, pool: str,
    min_replicas: int, max_replicas: int, concurrency: int, keep_alive_s: int,
) -> Deployment:
    """Deploy a version; it replaces the model's active deployment."""
    model = get_model(session, partner, model_slug)
    versions = repo.versions_of(session, model.id)
    if not versions:
        raise InvalidInput(f"model {model_slug!r} has no uploaded version to deploy")
    chosen = versions[-1] if version is None else repo.version_by_number(session, model.id, version)
    if chosen is None:
        raise NotFound(f"model {model_slug!r} has no version {version}")
    if min_replicas > max_replicas:
        raise InvalidInput("min_replicas cannot exceed max_replicas")
    for previous in repo.active_deployments(session, model.id):
        previous.status = "replaced"
    deployment = Deployment(
        model_id=model.id, version_id=chosen.id, pool=pool, min_replicas=min_replicas,
        max_replicas=max_replicas, concurrency=concurrency, keep_alive_s=keep_alive_s,
    )
    session.add(deployment)
    session.flush()
    return deployment


def serving_deployment(session: Session, model: Model) -> Deployment | None:
    """The deployment that serves the model's requests now."""
    active = repo.active_deployments(session, model.id)
    return active[0] if active else None

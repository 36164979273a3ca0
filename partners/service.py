"""Partner use cases: organisations, keys, models, versions (uploads) and deployments."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import Conflict, InvalidInput, NotFound
from kit.keys import key_digest, new_key
from partners import repository as repo
from partners.models import Deployment, DeploymentEvent, Model, ModelVersion, Partner, PartnerKey
from partners.packaging import PackageLimits
from partners.tenancy.packages import ingest_package


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
    """Validate a package archive on disk and store it as the model's next version."""
    with open(archive, "rb") as f:
        version = create_version_from_stream(session, partner, model, f, expected_digest=digest,
                                             limits=limits)
    if version.artifact_size != size:
        raise InvalidInput(f"the archive has {version.artifact_size} bytes, not {size}")
    return version


def create_version_from_stream(
    session: Session, partner: Partner, model: Model, source: BinaryIO | Iterable[bytes], *,
    expected_digest: str | None = None, limits: PackageLimits | None = None,
) -> ModelVersion:
    """Validate an upload as it streams, encrypting its blobs into the store in the same pass,
    and make it the model's next version. Nothing is stored if it is rejected."""
    stored = ingest_package(session, partner.id, source, expected_digest=expected_digest,
                            limits=limits)
    package = stored.package
    try:
        version = ModelVersion(
            model_id=model.id,
            number=repo.next_version_number(session, model.id),
            artifact_digest=stored.digest,
            artifact_size=stored.size,
            manifest=package.manifest.to_dict(),
            package=package.to_dict(),
        )
        session.add(version)
        session.flush()
    except BaseException:
        stored.discard()
        raise
    return version


def create_deployment(
    session: Session, partner: Partner, *, model_slug: str, version: int | None, pool: str,
    min_replicas: int, max_replicas: int, concurrency: int, keep_alive_s: int, actor: str = "api",
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
    repo.lock_model(session, model.id)
    replaced = repo.active_deployments(session, model.id)
    for previous in replaced:
        previous.status = "replaced"
    deployment = Deployment(
        model_id=model.id, version_id=chosen.id, pool=pool, min_replicas=min_replicas,
        max_replicas=max_replicas, concurrency=concurrency, keep_alive_s=keep_alive_s,
    )
    session.add(deployment)
    session.flush()
    _record(session, deployment, "created", actor=actor,
            from_version=replaced[0].version.number if replaced else None, to_version=chosen.number,
            detail={"replaces": replaced[0].id} if replaced else {})
    return deployment


def serving_deployment(session: Session, model: Model) -> Deployment | None:
    """The deployment that serves the model's requests now."""
    active = repo.active_deployments(session, model.id)
    return active[0] if active else None


# -- deployments as the partner manages them ----------------------------------------------

def _record(session: Session, deployment: Deployment, action: str, *, actor: str,
            from_version: int | None = None, to_version: int | None = None,
            detail: dict[str, Any] | None = None) -> DeploymentEvent:
    event = DeploymentEvent(model_id=deployment.model_id, deployment_id=deployment.id, action=action,
                            from_version=from_version, to_version=to_version, detail=detail or {},
                            actor=actor[:200])
    session.add(event)
    session.flush()
    return event


def get_deployment(session: Session, partner: Partner, deployment_id: str) -> Deployment:
    """One of the partner's deployments; another partner's is not found."""
    deployment = repo.partner_deployment(session, partner.id, deployment_id)
    if deployment is None:
        raise NotFound(f"no deployment {deployment_id!r}")
    return deployment


def update_deployment(
    session: Session, partner: Partner, deployment_id: str, *, actor: str,
    min_replicas: int | None = None, max_replicas: int | None = None,
    concurrency: int | None = None, keep_alive_s: int | None = None,
) -> Deployment:
    """Change an active deployment's scaling in place; workers pick it up on their next request."""
    deployment = get_deployment(session, partner, deployment_id)
    repo.lock_model(session, deployment.model_id)
    session.refresh(deployment)
    if deployment.status != "active":
        raise Conflict(f"deployment {deployment.id} is {deployment.status}; only the active one can change")
    changes = {k: v for k, v in {"min_replicas": min_replicas, "max_replicas": max_replicas,
                                 "concurrency": concurrency, "keep_alive_s": keep_alive_s}.items()
               if v is not None and getattr(deployment, k) != v}
    new_min = changes.get("min_replicas", deployment.min_replicas)
    new_max = changes.get("max_replicas", deployment.max_replicas)
    if new_min > new_max:
        raise InvalidInput("min_replicas cannot exceed max_replicas")
    if changes:
        before = {k: getattr(deployment, k) for k in changes}
        for key, value in changes.items():
            setattr(deployment, key, value)
        session.flush()
        _record(session, deployment, "scaled", actor=actor, detail={"before": before, "after": changes})
    return deployment


def rollout(session: Session, partner: Partner, deployment_id: str, *, version: int, actor: str) -> Deployment:
    """Move a model to another version with the same scaling: a new deployment replaces this one.

    Requests already queued finish on the version they were accepted for; new requests go to
    the new deployment, whose replicas start while the old ones drain and idle out.
    """
    current = get_deployment(session, partner, deployment_id)
    repo.lock_model(session, current.model_id)
    session.refresh(current)
    if current.status != "active":
        raise Conflict(f"deployment {current.id} is {current.status}; roll out from the active one")
    target = repo.version_by_number(session, current.model_id, version)
    if target is None:
        raise NotFound(f"this model has no version {version}")
    if target.id == current.version_id:
        raise Conflict(f"version {version} is already deployed")
    current.status = "replaced"
    deployment = Deployment(
        model_id=current.model_id, version_id=target.id, pool=current.pool,
        min_replicas=current.min_replicas, max_replicas=current.max_replicas,
        concurrency=current.concurrency, keep_alive_s=current.keep_alive_s,
    )
    session.add(deployment)
    session.flush()
    _record(session, deployment, "rollout", actor=actor, from_version=current.version.number,
            to_version=target.number, detail={"replaces": current.id})
    return deployment


def rollback(session: Session, partner: Partner, deployment_id: str, *, actor: str) -> Deployment:
    """Bring back the deployment this one replaced (its version and its scaling)."""
    current = get_deployment(session, partner, deployment_id)
    repo.lock_model(session, current.model_id)
    session.refresh(current)
    if current.status != "active":
        raise Conflict(f"deployment {current.id} is {current.status}; roll back the active one")
    previous = repo.previous_deployment(session, current.model_id, current.id)
    if previous is None:
        raise Conflict("there is no earlier deployment of this model to roll back to")
    current.status = "rolled_back"
    previous.status = "active"
    session.flush()
    _record(session, previous, "rollback", actor=actor, from_version=current.version.number,
            to_version=previous.version.number, detail={"rolled_back": current.id})
    return previous


def stop_deployment(session: Session, partner: Partner, deployment_id: str, *, actor: str) -> Deployment:
    """Take a model offline: new requests are refused, running ones finish."""
    deployment = get_deployment(session, partner, deployment_id)
    repo.lock_model(session, deployment.model_id)
    session.refresh(deployment)
    if deployment.status != "active":
        raise Conflict(f"deployment {deployment.id} is already {deployment.status}")
    deployment.status = "stopped"
    session.flush()
    _record(session, deployment, "stopped", actor=actor, from_version=deployment.version.number)
    return deployment


@dataclass(frozen=True)
class Health:
    """What a deployment looks like right now, from the replicas its workers report."""

    state: str
    ready: int
    starting: int
    failed: int
    last_error: str | None


def deployment_health(session: Session, deployments: list[Deployment]) -> dict[str, Health]:
    """Live state per deployment: ready/starting/failing replicas, or idle when scaled to zero."""
    replicas = repo.replicas_of(session, [d.id for d in deployments]) if deployments else []
    out: dict[str, Health] = {}
    for d in deployments:
        mine = [r for r in replicas if r.deployment_id == d.id]
        counts = {s: sum(1 for r in mine if r.state == s) for s in ("ready", "starting", "failed")}
        failures = [r for r in mine if r.state == "failed"]
        last_error = failures[0].detail if failures else None
        if d.status != "active":
            state = d.status
        elif counts["ready"]:
            state = "ready"
        elif counts["starting"]:
            state = "starting"
        elif counts["failed"]:
            state = "failing"
        else:
            state = "idle" if d.min_replicas == 0 else "pending"
        out[d.id] = Health(state, counts["ready"], counts["starting"], counts["failed"], last_error)
    return out


# -- keys --------------------------------------------------------------------------------

def revoke_key(session: Session, partner: Partner, key_id: str) -> PartnerKey:
    """Revoke one of the partner's API keys; requests signed with it fail from now on."""
    key = repo.partner_key(session, partner.id, key_id)
    if key is None:
        raise NotFound(f"no key {key_id!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


# -- usage ---------------------------------------------------------------------------------

RANGES = {"24h": (dt.timedelta(hours=24), "hour"), "7d": (dt.timedelta(days=7), "day"),
          "30d": (dt.timedelta(days=30), "day")}


def usage_stats(session: Session, partner: Partner, *, range_: str = "7d",
                model_slug: str | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """Request counts and run-time percentiles per bucket and model over a recent window."""
    if range_ not in RANGES:
        raise InvalidInput(f"range must be one of {', '.join(RANGES)}")
    span, bucket = RANGES[range_]
    now = now or utcnow()
    until = _truncate(now, bucket) + (dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1))
    since = until - span
    model_id = get_model(session, partner, model_slug).id if model_slug else None
    rows = repo.request_stats(session, partner.id, since=since, until=until, bucket=bucket, model_id=model_id)
    return {"range": range_, "bucket": bucket, "since": since, "until": until, "rows": rows}


def _truncate(when: dt.datetime, bucket: str) -> dt.datetime:
    when = when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return when if bucket == "hour" else when.replace(hour=0)

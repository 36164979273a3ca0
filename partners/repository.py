"""All SQL of the partners domain."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from partners.models import Deployment, Model, ModelVersion, Partner, PartnerKey


def partner_by_slug(session: Session, slug: str) -> Partner | None:
    return session.scalar(select(Partner).where(Partner.slug == slug))


def partner_by_key_digest(session: Session, digest: str) -> Partner | None:
    return session.scalar(
        select(Partner).join(PartnerKey, PartnerKey.partner_id == Partner.id)
        .where(PartnerKey.digest == digest, PartnerKey.revoked_at.is_(None))
    )


def model_by_slug(session: Session, partner_slug: str, model_slug: str) -> Model | None:
    return session.scalar(
        select(Model).join(Partner, Partner.id == Model.partner_id)
        .where(Partner.slug == partner_slug, Model.slug == model_slug)
    )


def partner_model(session: Session, partner_id: str, model_slug: str) -> Model | None:
    return session.scalar(select(Model).where(Model.partner_id == partner_id, Model.slug == model_slug))


def models_of(session: Session, partner_id: str) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.partner_id == partner_id).order_by(Model.id)))


def all_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.id)))


def next_version_number(session: Session, model_id: str) -> int:
    current = session.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model_id))
    return (current or 0) + 1


def versions_of(session: Session, model_id: str) -> list[ModelVersion]:
    return list(session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)
    ))


def version(session: Session, version_id: str) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def version_by_number(session: Session, model_id: str, number: int) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    )


def deployment(session: Session, deployment_id: str) -> Deployment | None:
    return session.get(Deployment, deployment_id)


def active_deployments(session: Session, model_id: str) -> list[Deployment]:
    return list(session.scalars(
        select(Deployment).where(Deployment.model_id == model_id, Deployment.status == "active")
        .order_by(Deployment.id.desc())
    ))


def deployments_of(session: Session, partner_id: str) -> list[Deployment]:
    return list(session.scalars(
        select(Deployment).join(Model, Model.id == Deployment.model_id)
        .where(Model.partner_id == partner_id).order_by(Deployment.id)
    ))

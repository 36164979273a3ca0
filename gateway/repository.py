"""All SQL of the gateway domain."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.models import ApiKey, File, Request


def key_by_digest(session: Session, digest: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.digest == digest, ApiKey.revoked_at.is_(None)))


def request_of_account(session: Session, request_id: str, account_id: str) -> Request | None:
    return session.scalar(select(Request).where(Request.id == request_id, Request.account_id == account_id))


def request_for_update(session: Session, request_id: str) -> Request | None:
    return session.scalar(select(Request).where(Request.id == request_id).with_for_update())


def request_by_idempotency_key(session: Session, account_id: str, key: str) -> Request | None:
    return session.scalar(
        select(Request).where(Request.account_id == account_id, Request.idempotency_key == key)
    )


def queue_position(session: Session, req: Request) -> int:
    """How many queued requests of the same pool were created before this one."""
    return session.scalar(
        select(func.count()).select_from(Request)
        .where(Request.status == "queued", Request.pool == req.pool, Request.created_at < req.created_at)
    ) or 0


def files_of_request(session: Session, request_id: str) -> list[File]:
    return list(session.scalars(select(File).where(File.request_id == request_id).order_by(File.id)))


def file_of_account(session: Session, file_id: str, account_id: str) -> File | None:
    return session.scalar(select(File).where(File.id == file_id, File.account_id == account_id))


def file(session: Session, file_id: str) -> File | None:
    return session.get(File, file_id)

"""Members and API keys of the partner API (`/v1/partner/members`, `/v1/partner/keys`)."""

from __future__ import annotations

from fastapi import Depends
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.errors import Forbidden
from kit.settings import get_settings
from kit.web import router as make_router
from partners import members, service
from partners import repository as repo
from partners.auth import Actor, actor_with, current_partner
from partners.models import Partner
from partners.schemas import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    MemberCreate,
    MemberCreated,
    MemberOut,
    MemberUpdate,
)

router = make_router(tags=["partner organisation"])
admin = actor_with("admin")


def invite_url(token: str) -> str:
    """The portal page where an invited member sets a password."""
    return f"{get_settings().public_url.rstrip('/')}/portal/invite/{token}"


@router.get("/members", response_model=list[MemberOut])
def list_members(partner: Partner = Depends(current_partner), session: Session = Depends(get_session)) -> list[MemberOut]:
    """The organisation's members."""
    return [MemberOut.model_validate(m) for m in repo.members_of(session, partner.id)]


@router.post("/members", response_model=MemberCreated, status_code=201)
def create_member(body: MemberCreate, actor: Actor = Depends(admin),
                  session: Session = Depends(get_session)) -> MemberCreated:
    """Add a member: with a password, or with a single-use invitation link (returned once)."""
    if body.role == "owner" and actor.member is not None and actor.member.role != "owner":
        raise Forbidden("only an owner can add another owner")
    member, token = members.create_member(session, actor.partner, email=body.email, name=body.name,
                                          role=body.role, password=body.password)
    return MemberCreated(**MemberOut.model_validate(member).model_dump(),
                         invite_url=invite_url(token) if token else None)


@router.patch("/members/{member_id}", response_model=MemberOut)
def update_member(member_id: str, body: MemberUpdate, actor: Actor = Depends(admin),
                  session: Session = Depends(get_session)) -> MemberOut:
    """Change a member's name or role."""
    member = members.update_member(session, actor.partner, member_id, role=body.role, name=body.name,
                                   by=actor.member)
    return MemberOut.model_validate(member)


@router.delete("/members/{member_id}", response_model=MemberOut)
def remove_member(member_id: str, actor: Actor = Depends(admin),
                  session: Session = Depends(get_session)) -> MemberOut:
    """Disable a member; their portal sessions end at once."""
    return MemberOut.model_validate(members.remove_member(session, actor.partner, member_id, by=actor.member))


@router.get("/keys", response_model=list[KeyOut])
def list_keys(actor: Actor = Depends(admin), session: Session = Depends(get_session)) -> list[KeyOut]:
    """The organisation's API keys (never the secrets)."""
    return [KeyOut.model_validate(k) for k in repo.keys_of(session, actor.partner.id)]


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, actor: Actor = Depends(admin), session: Session = Depends(get_session)) -> KeyCreated:
    """A new API key, shown once."""
    secret = service.issue_key(session, partner_id=actor.partner.id, name=body.name)
    key = repo.key_by_digest(session, service.key_digest(secret))
    assert key is not None
    return KeyCreated(**KeyOut.model_validate(key).model_dump(), api_key=secret)


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, actor: Actor = Depends(admin), session: Session = Depends(get_session)) -> KeyOut:
    """Revoke an API key; calls signed with it fail from now on."""
    return KeyOut.model_validate(service.revoke_key(session, actor.partner, key_id))

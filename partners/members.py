"""Partner members: argon2 passwords, invitations, roles and portal sessions.

A portal session is a random token in an HttpOnly cookie; the table keeps only its SHA-256,
so a leaked database cannot be replayed as a cookie. Each session carries its own CSRF token
(the synchroniser pattern), which every state-changing form and htmx call must echo.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import AppError, Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from kit.keys import key_digest
from partners import repository as repo
from partners.models import MEMBER_ROLES, Partner, PartnerMember, PortalSession

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
SESSION_IDLE = dt.timedelta(hours=12)
SESSION_MAX = dt.timedelta(days=7)
INVITE_TTL = dt.timedelta(days=7)
MAX_FAILED_SIGN_INS = 5
LOCKOUT = dt.timedelta(minutes=15)
ROLE_RANK = {role: rank for rank, role in enumerate(reversed(MEMBER_ROLES))}  # viewer 0 … owner 3


class SignInFailed(AppError):
    status_code, type, title = 401, "sign-in-failed", "Sign-in failed"


class LockedOut(AppError):
    status_code, type, title = 429, "locked-out", "Too many failed sign-ins"


@functools.cache
def _hasher() -> PasswordHasher:
    # argon2id with the library's RFC 9106 low-memory profile (64 MiB, t=3, p=4).
    return PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash of a password that meets the policy."""
    check_password_policy(password)
    return _hasher().hash(password)


def check_password_policy(password: str) -> None:
    """Long enough to resist guessing, short enough not to be a hashing denial of service."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"passwords need at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"passwords are limited to {MAX_PASSWORD} characters")


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _hasher().verify(stored or _dummy_hash(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def has_role(member: PartnerMember, minimum: str) -> bool:
    """True when the member's role is `minimum` or above (viewer < developer < admin < owner)."""
    return ROLE_RANK[member.role] >= ROLE_RANK[minimum]


def _check_role(role: str) -> None:
    if role not in MEMBER_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(MEMBER_ROLES)}")


# -- members ---------------------------------------------------------------------------------

def create_member(
    session: Session, partner: Partner, *, email: str, name: str = "", role: str = "developer",
    password: str | None = None,
) -> tuple[PartnerMember, str | None]:
    """Add a member; without a password they get an invitation token (returned once)."""
    _check_role(role)
    email = email.strip()
    if repo.member_by_email(session, email) is not None:
        raise Conflict("a member with that email already exists")
    member = PartnerMember(partner_id=partner.id, email=email, name=name.strip(), role=role)
    invite = None
    if password is not None:
        member.password_hash = hash_password(password)
    else:
        invite = secrets.token_urlsafe(32)
        member.invite_digest = key_digest(invite)
        member.invite_expires_at = utcnow() + INVITE_TTL
    session.add(member)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent invite of the same email won
        raise Conflict("a member with that email already exists") from exc
    return member, invite


def get_member(session: Session, partner: Partner, member_id: str) -> PartnerMember:
    """One of the partner's members; another partner's is not found."""
    member = repo.partner_member(session, partner.id, member_id)
    if member is None:
        raise NotFound(f"no member {member_id!r}")
    return member


def _keep_an_owner(session: Session, member: PartnerMember) -> None:
    if member.role == "owner" and member.disabled_at is None and repo.count_owners(session, member.partner_id) <= 1:
        raise Conflict("an organisation needs at least one owner; make someone else owner first")


def update_member(session: Session, partner: Partner, member_id: str, *, role: str | None = None,
                  name: str | None = None, by: PartnerMember | None = None) -> PartnerMember:
    """Change a member's role or name; only an owner grants or takes away the owner role."""
    member = get_member(session, partner, member_id)
    if role is not None and role != member.role:
        _check_role(role)
        if by is not None and "owner" in (role, member.role) and by.role != "owner":
            raise Forbidden("only an owner can grant or remove the owner role")
        if member.role == "owner":
            _keep_an_owner(session, member)
        member.role = role
    if name is not None:
        member.name = name.strip()
    session.flush()
    return member


def remove_member(session: Session, partner: Partner, member_id: str, *,
                  by: PartnerMember | None = None) -> PartnerMember:
    """Disable a member and end their sessions at once."""
    member = get_member(session, partner, member_id)
    if by is not None and member.role == "owner" and by.role != "owner":
        raise Forbidden("only an owner can remove an owner")
    _keep_an_owner(session, member)
    now = utcnow()
    member.disabled_at = member.disabled_at or now
    member.invite_digest = None
    repo.revoke_member_sessions(session, member.id, now)
    session.flush()
    return member


def invited_member(session: Session, token: str) -> PartnerMember:
    """The member an unexpired invitation names."""
    member = repo.member_by_invite(session, key_digest(token))
    if (member is None or member.disabled_at is not None or member.invite_expires_at is None
            or member.invite_expires_at < utcnow()):
        raise NotFound("this invitation is not valid or has expired; ask for a new one")
    return member


def accept_invite(session: Session, token: str, *, password: str) -> PartnerMember:
    """Set the invited member's password; the invitation cannot be used again."""
    member = invited_member(session, token)
    member.password_hash = hash_password(password)
    member.invite_digest = None
    member.invite_expires_at = None
    session.flush()
    return member


def change_password(session: Session, member: PartnerMember, *, current: str, new: str) -> None:
    """Change one's own password; every other session of the member ends."""
    if not _verify(member.password_hash, current):
        raise InvalidInput("the current password is not right")
    member.password_hash = hash_password(new)
    repo.revoke_member_sessions(session, member.id, utcnow())
    session.flush()


# -- sessions -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewSession:
    """A fresh session; `token` goes into the cookie and is never stored."""

    row: PortalSession
    token: str


def sign_in(session: Session, *, email: str, password: str, user_agent: str = "") -> NewSession:
    """Check a member's password (argon2) and open a portal session."""
    now = utcnow()
    member = repo.member_by_email(session, email.strip()) if email else None
    if member is not None and member.locked_until is not None and member.locked_until > now:
        raise LockedOut("too many failed sign-ins; try again in a few minutes")
    # Verify against a dummy hash for unknown emails so timing does not reveal members.
    ok = _verify(member.password_hash if member else None, password[:MAX_PASSWORD])
    if member is None or not ok or member.disabled_at is not None:
        if member is not None and not ok:
            member.failed_sign_ins += 1
            if member.failed_sign_ins >= MAX_FAILED_SIGN_INS:
                member.failed_sign_ins, member.locked_until = 0, now + LOCKOUT
            session.flush()
        raise SignInFailed("that email and password do not match")
    if _hasher().check_needs_rehash(member.password_hash or ""):
        member.password_hash = _hasher().hash(password)
    member.failed_sign_ins, member.locked_until, member.last_sign_in_at = 0, None, now
    token = secrets.token_urlsafe(32)
    row = PortalSession(member_id=member.id, token_digest=key_digest(token),
                        csrf_token=secrets.token_urlsafe(32), user_agent=user_agent[:300],
                        created_at=now, last_seen_at=now, expires_at=now + SESSION_IDLE)
    session.add(row)
    session.flush()
    return NewSession(row, token)


def session_for_token(session: Session, token: str | None) -> PortalSession | None:
    """The live session a cookie names, its idle expiry pushed forward; None when it is over."""
    if not token:
        return None
    row = repo.portal_session_by_digest(session, key_digest(token))
    now = utcnow()
    if (row is None or row.revoked_at is not None or row.expires_at < now
            or row.member.disabled_at is not None):
        return None
    # Touch at most once a minute so polling pages do not write on every request.
    if now - row.last_seen_at > dt.timedelta(minutes=1):
        row.last_seen_at = now
        row.expires_at = min(now + SESSION_IDLE, row.created_at + SESSION_MAX)
        session.flush()
    return row


def sign_out(session: Session, token: str | None) -> None:
    """End the session a cookie names."""
    row = repo.portal_session_by_digest(session, key_digest(token)) if token else None
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()


def csrf_ok(row: PortalSession, supplied: str | None) -> bool:
    """Constant-time check of a CSRF token against the session's."""
    return bool(supplied) and hmac.compare_digest(row.csrf_token.encode(), (supplied or "").encode())


def require_session(session: Session, token: str | None) -> PortalSession:
    """The live session, or 401."""
    row = session_for_token(session, token)
    if row is None:
        raise Unauthorized("sign in to the portal first")
    return row


def prune_sessions(session: Session) -> int:
    """Delete sessions past their expiry (for a periodic task)."""
    return repo.prune_portal_sessions(session, utcnow())

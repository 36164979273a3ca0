"""Setting and reading policy layers (accounts: trust and safety; models: partner and platform)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import InvalidInput
from moderation import repository as repo
from moderation.cache import POLICY, cached
from moderation.config import get_moderation_settings
from moderation.models import ModerationPolicy, ModerationPolicyChange
from moderation.policies import (
    AccountLayer,
    EffectivePolicy,
    ModelLayer,
    RequestOptions,
    resolve,
    validate_actions,
)

MAX_CUSTOM_TERMS = 1000
MAX_TERM_CHARS = 100


def _snapshot(row: ModerationPolicy) -> dict[str, Any]:
    return {
        "scope": row.scope, "subject_id": row.subject_id, "source": row.source,
        "actions": dict(row.actions or {}), "nsfw_threshold": row.nsfw_threshold,
        "verified": row.verified, "nsfw_opt_in": row.nsfw_opt_in,
        "custom_terms": list(row.custom_terms or []), "version": row.version,
    }


def _save(session: Session, row: ModerationPolicy, changed_by: str, *, new: bool) -> ModerationPolicy:
    if not new:
        row.version += 1
    row.updated_by = changed_by
    row.updated_at = utcnow()
    repo.add(session, row)
    repo.add(session, ModerationPolicyChange(policy_id=row.id, version=row.version,
                                             snapshot=_snapshot(row), changed_by=changed_by))
    return row


def set_account_policy(
    session: Session,
    *,
    account_id: str,
    changed_by: str,
    verified: bool | None = None,
    nsfw_opt_in: bool | None = None,
    actions: Mapping[str, str] | None = None,
    custom_terms: Sequence[str] | None = None,
) -> ModerationPolicy:
    """Set an account's layer (trust and safety only); arguments left None stay as they are.

    Adult content (`nsfw_opt_in`) needs a verified account; un-verifying an account also
    withdraws its opt-in. `actions` may tighten any category, and loosen `sexual` only for
    a verified opt-in; `csam` is always `block`.
    """
    row = repo.policy(session, "account", account_id, "platform")
    new = row is None
    if row is None:
        row = ModerationPolicy(scope="account", subject_id=account_id, source="platform",
                               actions={}, custom_terms=[], verified=False, nsfw_opt_in=False,
                               version=1)
    if verified is not None:
        row.verified = verified
        if not verified:
            row.nsfw_opt_in = False
    if nsfw_opt_in is not None:
        if nsfw_opt_in and not row.verified:
            raise InvalidInput("adult content can only be enabled for a verified account")
        row.nsfw_opt_in = nsfw_opt_in
    if actions is not None:
        row.actions = validate_actions(actions)
    if custom_terms is not None:
        terms = [t.strip() for t in custom_terms if t and t.strip()]
        if len(terms) > MAX_CUSTOM_TERMS:
            raise InvalidInput(f"at most {MAX_CUSTOM_TERMS} custom terms")
        if any(len(t) > MAX_TERM_CHARS for t in terms):
            raise InvalidInput(f"a custom term is at most {MAX_TERM_CHARS} characters")
        row.custom_terms = sorted(set(terms))
    return _save(session, row, changed_by, new=new)


def set_model_policy(
    session: Session,
    *,
    model_id: str,
    source: str,
    changed_by: str,
    actions: Mapping[str, str] | None = None,
    nsfw_threshold: float | None = None,
) -> ModerationPolicy:
    """Set a model's floor, as its partner (`source="partner"`) or the platform.

    Each layer only ever tightens: per category the strictest of account, partner and
    platform wins, and the lowest NSFW threshold applies. Licence obligations (e.g. a
    licence that requires content filters) are a platform layer with `sexual: block`.
    """
    if source not in ("partner", "platform"):
        raise InvalidInput("a model policy is set by 'partner' or 'platform'")
    if nsfw_threshold is not None and not 0.05 <= nsfw_threshold <= 1.0:
        raise InvalidInput("nsfw_threshold must be between 0.05 and 1.0")
    row = repo.policy(session, "model", model_id, source)
    new = row is None
    if row is None:
        row = ModerationPolicy(scope="model", subject_id=model_id, source=source, actions={},
                               custom_terms=[], version=1)
    if actions is not None:
        row.actions = validate_actions(actions)
    if nsfw_threshold is not None or actions is not None:
        row.nsfw_threshold = nsfw_threshold
    return _save(session, row, changed_by, new=new)


def layers_for(session: Session, *, account_id: str, model_id: str) -> tuple[AccountLayer, list[ModelLayer]]:
    """The stored account and model layers that apply to a request."""
    account = AccountLayer()
    models: list[ModelLayer] = []
    for row in repo.policies_for(session, account_id=account_id, model_id=model_id):
        if row.scope == "account":
            account = AccountLayer(verified=row.verified, nsfw_opt_in=row.nsfw_opt_in,
                                   actions=dict(row.actions or {}),
                                   custom_terms=tuple(row.custom_terms or ()), version=row.version)
        else:
            models.append(ModelLayer(source=row.source, actions=dict(row.actions or {}),
                                     nsfw_threshold=row.nsfw_threshold, version=row.version))
    return account, models


def effective_policy(
    session: Session, *, account_id: str, model_id: str, request_options: RequestOptions | None = None,
) -> EffectivePolicy:
    """The policy that applies to one request of `account_id` on `model_id` (cached per process)."""
    options = request_options or RequestOptions()

    def load() -> EffectivePolicy:
        account, models = layers_for(session, account_id=account_id, model_id=model_id)
        return resolve(account=account, models=models, request=options,
                       base_threshold=get_moderation_settings().nsfw_threshold)

    key = f"{account_id}|{model_id}|{options.enable_safety_checker}|{options.safety_tolerance}"
    return cached(session, POLICY, key, load)

"""Customer use cases: accounts' keys, submitting requests, reading and canceling them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jsonschema
from sqlalchemy.orm import Session

from billing import service as billing
from billing.models import Account
from gateway import events, lifecycle, pools, webhooks
from gateway import repository as repo
from gateway.cache import cached
from gateway.models import FINAL_STATUSES, ApiKey, Request
from kit.db import utcnow
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound
from kit.ids import new_id
from kit.keys import key_digest, new_key
from kit.tasks import enqueue, pool_queue
from moderation import service as moderation
from partners import repository as partners_repo
from partners import service as partners

RUN_TASK = "gateway.run_request"
PRIORITIES = {"normal": 0, "low": 6}


def issue_key(session: Session, account: Account, *, name: str = "default",
              scopes: list[str] | None = None) -> str:
    """A new customer API key for the account; returned once, stored as a digest."""
    key = new_key("mg_live")
    session.add(ApiKey(account_id=account.id, name=name, digest=key_digest(key),
                       scopes=scopes or ["requests:write", "requests:read"]))
    session.flush()
    return key


def body_digest(payload: dict[str, Any]) -> str:
    """A stable digest of a submitted body, to tell a retry from a different request."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def validate_input(schema: dict[str, Any], data: dict[str, Any],
                   validator: jsonschema.protocols.Validator | None = None) -> dict[str, Any]:
    """Check the input against the model's schema and fill in defaults; 422 names the field."""
    validator = validator or jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required" and not path:
            missing = [f for f in error.validator_value if f not in data]
            path = missing[0] if missing else ""
        field = f"input.{path}" if path else "input"
        raise InvalidInput(f"{field}: {error.message}", field=field)
    filled = dict(data)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and "default" in prop:
            filled[name] = prop["default"]
    return filled


@dataclass(frozen=True)
class Target:
    """What a submit needs to know about a model, cached briefly per API process."""

    model_id: str
    deployment_id: str
    version_id: str
    pool: str
    inputs_schema: dict[str, Any]
    license_tier: str
    currency: str
    validator: Any  # compiled once per cached target


def _target(session: Session, owner: str, model_slug: str) -> Target:
    def load() -> Target:
        model = partners_repo.model_by_slug(session, owner, model_slug)
        if model is None:
            raise NotFound(f"no model {owner}/{model_slug}")
        deployment = partners.serving_deployment(session, model)
        if deployment is None:
            raise NotFound(f"model {owner}/{model_slug} is not deployed")
        pricing = billing.pricing_at(session, model.id)
        schema = deployment.version.inputs_schema
        return Target(model.id, deployment.id, deployment.version_id, deployment.pool, schema,
                      pricing.license.tier, pricing.price_card.currency, jsonschema.Draft202012Validator(schema))

    return cached("target", f"{owner}/{model_slug}", load)


@dataclass(frozen=True)
class Submitted:
    """What a submit did: the request, whether it is new, and (when the insert counted it)
    how many queued requests are ahead of it; inside a group commit, known once the batch is
    written."""

    request: Request
    created: bool
    position: int | repo.PendingInsert | None = None

    @property
    def queue_position(self) -> int | None:
        return self.position.position if isinstance(self.position, repo.PendingInsert) else self.position


def submit(
    session: Session, account: Account, *, owner: str, model_slug: str, input: dict[str, Any],
    webhook: str | None = None, webhook_events: list[str] | None = None,
    idempotency_key: str | None = None, priority: str = "normal", start_deadline_s: float | None = None,
) -> Submitted:
    """Queue a request for a model. Enqueued only on commit.

    The hot path reads nothing from the database when the per-process caches are warm (key,
    account, model, route, policy, holds) and writes with one statement: the request, the
    input check's record and the request's queue position.
    """
    if moderation.is_account_suspended(session, account.id):
        raise Forbidden("this account is suspended pending a content review", type="account-suspended")
    events_filter = webhooks.normalise_events(webhook_events)
    digest = body_digest({"model": f"{owner}/{model_slug}", "input": input, "webhook": webhook,
                          "webhook_events": events_filter})
    if idempotency_key:
        existing = repo.request_by_idempotency_key(session, account.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest)
    target = _target(session, owner, model_slug)
    # Licensed for this account (403) and, when prepaid, covered by its credit (402).
    billing.authorize_request(session, account, target.model_id, version_id=target.version_id)
    if webhook:
        webhooks.check_url(webhook)
    filled = validate_input(target.inputs_schema, input, target.validator)
    request_id = new_id("req")
    verdict = moderation.check_input(session, account_id=account.id, model_id=target.model_id,
                                     input=filled, request_id=request_id, defer_record=True)
    now = utcnow()
    req = Request(
        id=request_id,
        account_id=account.id, model_id=target.model_id, version_id=target.version_id,
        deployment_id=target.deployment_id, model_ref=f"{owner}/{model_slug}",
        pool=pools.route(session, account_id=account.id, model_id=target.model_id, default_pool=target.pool),
        priority=priority, status="queued", input=filled, webhook=webhook, webhook_events=events_filter,
        idempotency_key=idempotency_key, body_digest=digest, currency=target.currency, created_at=now,
        moderation_input=verdict.decision,
        deadline_at=now + dt.timedelta(seconds=start_deadline_s) if start_deadline_s else None,
    )
    if verdict.blocked:
        req.status = "blocked"
        req.error = verdict.reason or "the input was blocked by content policy"
        req.completed_at = now
    deferred = None if idempotency_key or verdict.blocked else repo.defer_insert(session, req, record=verdict.record)
    position: int | repo.PendingInsert | None
    if deferred is not None:  # written with the rest of its group commit
        created, position = True, deferred
    else:
        created, position = repo.insert_request(session, req, record=verdict.record)
    verdict.record = None
    if not created:  # a concurrent submit with the same Idempotency-Key won
        existing = repo.request_by_idempotency_key(session, account.id, idempotency_key or "")
        if existing is None:
            raise Conflict("this Idempotency-Key was used with a different body")
        return _replay(existing, digest)
    if verdict.blocked:
        lifecycle.announce(session, req)
        return Submitted(req, True)
    events.publish_after_commit(session, req.id, "status", {"status": "queued"})
    # Redis lists one step per priority; a worker takes the lower number first.
    enqueue(session, RUN_TASK, req.id, queue=pool_queue(req.pool), priority=PRIORITIES[priority])
    return Submitted(req, True, position)


def _replay(existing: Request, digest: str) -> Submitted:
    """The earlier request of an Idempotency-Key, if this is the same body (409 otherwise)."""
    if existing.body_digest != digest:
        raise Conflict("this Idempotency-Key was used with a different body")
    return Submitted(existing, False)


def get_request(session: Session, account: Account, request_id: str) -> Request:
    """One of the account's requests; another account's is not found."""
    req = repo.request_of_account(session, request_id, account.id)
    if req is None:
        raise NotFound(f"no request {request_id}")
    return req


def cancel(session: Session, account: Account, request_id: str) -> Request:
    """Cancel: a queued request at once; a running one gets a cancel signal."""
    req = get_request(session, account, request_id)
    locked = repo.request_for_update(session, req.id)
    assert locked is not None
    if locked.status == "queued":
        locked.status = "canceled"
        locked.completed_at = utcnow()
        lifecycle.announce(session, locked)
    elif locked.status == "running" and not locked.cancel_requested:
        locked.cancel_requested = True
        events.publish_after_commit(session, locked.id, "cancel", {})
    return locked


def is_final(req: Request) -> bool:
    """True once the request has its final status."""
    return req.status in FINAL_STATUSES

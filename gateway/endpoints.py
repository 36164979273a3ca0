"""The customer API (`/v1`): submit, read, cancel, files, catalog and usage."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any, Literal

from fastapi import Depends, Header, Path, Query, Security
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from billing import service as billing
from billing.models import Account
from gateway import envelope as env
from gateway import events, group_commit, service, sse
from gateway import repository as repo
from gateway.auth import API_KEY, account_reader, account_writer, admit, authenticate
from gateway.models import FINAL_STATUSES, Request
from gateway.openapi import problems
from gateway.schemas import (
    Envelope,
    ModelCard,
    PriceOut,
    SubmitBody,
    UsageOut,
    WebhookAttemptOut,
    WebhookDeliveryOut,
)
from kit.db import get_session, session_scope, utcnow
from kit.errors import InvalidInput, NotFound, Unauthorized
from kit.keys import bearer_token
from kit.signing import verify
from kit.storage import get_storage
from kit.web import router as make_router
from partners import repository as partners_repo
from partners import service as partners

router = make_router(prefix="/v1", tags=["requests"], responses=problems(401, 403, 429))
RequestId = Path(max_length=40, description="The request's id, `req_…`")

MAX_WAIT_S = 60


def _prefer_wait(prefer: str | None) -> float | None:
    if not prefer:
        return None
    match = re.search(r"\bwait(?:=(\d+))?\b", prefer)
    if match is None:
        return None
    return float(min(int(match.group(1) or MAX_WAIT_S), MAX_WAIT_S))


class WaitThenEnvelope(JSONResponse):
    """Sent after the handler's transaction commits: waits for a final status, then renders."""

    def __init__(self, request_id: str, account_id: str, wait_s: float, status_code: int) -> None:
        super().__init__(content=None, status_code=status_code)
        self.request_id, self.account_id, self.wait_s = request_id, account_id, wait_s

    def _render_now(self) -> dict[str, Any]:
        with session_scope() as session:
            req = repo.request_of_account(session, self.request_id, self.account_id)
            assert req is not None
            return env.envelope(session, req).model_dump(mode="json")

    def _done(self) -> bool:
        with session_scope() as session:
            req = session.get(Request, self.request_id)
            return req is None or req.status in FINAL_STATUSES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        final = await events.wait_until(self._done, self.request_id, self.wait_s)
        if final is None or "id" not in final:
            final = await asyncio.to_thread(self._render_now)
        self.body = self.render(final)
        self.init_headers()
        await super().__call__(scope, receive, send)


async def _submit_key(authorization: str | None = Security(API_KEY)) -> str | None:
    # Solved before the body is read, so a call without a key is a 401 whatever its body.
    if bearer_token(authorization) is None:
        raise Unauthorized("an API key is required: Authorization: Key <key>")
    return authorization


@router.post("/models/{owner}/{model}/requests", response_model=Envelope, status_code=201,
             responses={200: {"model": Envelope, "description": "An earlier request with this Idempotency-Key"},
                        **problems(404, 409, 413, 422)})
async def submit(
    request: HttpRequest, owner: str, model: str, body: SubmitBody,
    idempotency_key: str | None = Header(default=None, max_length=255, description=(
        "Same key and body within 24 h return the first request (200), never a second charge; "
        "the same key with another body is 409")),
    prefer: str | None = Header(default=None, max_length=200, description=(
        "`wait` or `wait=N` (N ≤ 60): answer when the request finishes or after N s")),
    request_timeout: float | None = Header(default=None, gt=0, le=86400, description=(
        "Seconds the request may wait to start; still queued then, it ends `expired`, uncharged")),
    priority: Literal["normal", "low"] = Header(default="normal", description=(
        "Within the pool, `normal` requests start before `low` ones")),
    authorization: str | None = Depends(_submit_key),
) -> Any:
    """Submit a request to a model. `Prefer: wait=N` holds the answer until it finishes (≤ 60 s)."""
    state = request.scope.setdefault("state", {})
    wait_s = _prefer_wait(prefer)

    def who(session: Session) -> tuple[Account, Any]:
        return admit(authorization, session, "requests:write", state)

    def submit_in(session: Session, account: Account) -> Any:
        # Key, limit, checks and insert in this process's next group commit (one thread, one
        # transaction and one COMMIT for the submits that arrive together, their rate-limit
        # tokens taken in one round trip); the answer is rendered after the batch's rows are
        # written, before the commit, and sent after it, the task once it has landed.
        done = service.submit(
            session, account, owner=owner, model_slug=model, input=body.input,
            webhook=str(body.webhook) if body.webhook else None, webhook_events=body.webhook_events,
            idempotency_key=idempotency_key, priority=priority, start_deadline_s=request_timeout,
        )
        req, status_code = done.request, 201 if done.created else 200
        if wait_s and req.status not in FINAL_STATUSES:
            return WaitThenEnvelope(req.id, account.id, wait_s, status_code)

        def render() -> Response:
            rendered = env.envelope(session, req, queue_position=done.queue_position).model_dump_json()
            return Response(rendered, status_code=status_code, media_type="application/json")

        return group_commit.AfterWrites(render)

    return await group_commit.run(group_commit.Admitted(who, submit_in))


@router.get("/requests/{request_id}", response_model=Envelope, responses=problems(404))
def get_request(
    request_id: str = RequestId,
    prefer: str | None = Header(default=None, max_length=200, description=(
        "`wait=N` (N ≤ 60): a long poll, answered when the request finishes or after N s")),
    account: Account = Depends(account_reader), session: Session = Depends(get_session),
) -> Any:
    """The request's envelope: status, queue position, output, metrics and cost."""
    req = service.get_request(session, account, request_id)
    wait_s = _prefer_wait(prefer)
    if wait_s and req.status not in FINAL_STATUSES:
        return WaitThenEnvelope(req.id, account.id, wait_s, 200)
    return env.envelope(session, req)


@router.post("/requests/{request_id}/cancel", response_model=Envelope, responses=problems(404))
def cancel_request(request_id: str = RequestId, account: Account = Depends(account_writer),
                   session: Session = Depends(get_session)) -> Envelope:
    """Cancel: a queued request ends at once; a running one is signaled and ends when it stops."""
    return env.envelope(session, service.cancel(session, account, request_id))


@router.get("/requests/{request_id}/events", response_class=StreamingResponse, responses={
    200: {"description": sse.DESCRIPTION, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **problems(404)})
async def request_events(
    request: HttpRequest,
    request_id: str = RequestId,
    last_event_id: str | None = Header(default=None, max_length=40, pattern=r"^\d+-\d+$",
                                       description="Resume after this event id (what the last `id:` line said)"),
    authorization: str | None = Security(API_KEY),
) -> StreamingResponse:
    """Server-Sent Events of a request: `status`, `progress`, `log`, `output`, then `done`."""
    state = request.scope.setdefault("state", {})

    def owner() -> tuple[str, str]:
        # One thread, one short transaction: an open stream holds no database connection,
        # and a crowd of streams opening at once cannot starve the pool.
        with session_scope() as session:
            account = authenticate(authorization, state, session, "requests:read")
            return account.id, service.get_request(session, account, request_id).id

    account_id, found = await asyncio.to_thread(owner)
    return StreamingResponse(sse.stream(found, account_id, last_event_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/requests/{request_id}/webhooks", response_model=list[WebhookDeliveryOut],
            tags=["webhooks"], responses=problems(404))
def request_webhooks(request_id: str = RequestId, account: Account = Depends(account_reader),
                     session: Session = Depends(get_session)) -> list[WebhookDeliveryOut]:
    """Every webhook delivery of a request, with each attempt and its answer."""
    req = service.get_request(session, account, request_id)
    deliveries = repo.deliveries_of_request(session, req.id)
    attempts: dict[str, list[WebhookAttemptOut]] = {}
    for a in repo.attempts_of(session, [d.id for d in deliveries]):
        attempts.setdefault(a.delivery_id, []).append(WebhookAttemptOut.model_validate(a, from_attributes=True))
    return [WebhookDeliveryOut(id=d.id, url=d.url, event=d.event, status=d.status,  # type: ignore[arg-type]
                               attempts=attempts.get(d.id, []), next_attempt_at=d.next_attempt_at,
                               delivered_at=d.delivered_at, created_at=d.created_at) for d in deliveries]


@router.get("/files/{file_id}", response_class=StreamingResponse, tags=["files"],
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       **problems(404)})
def get_file(file_id: str = Path(max_length=40, pattern=r"^[a-z]+_[0-9a-z]+$"),
             expires: int = Query(..., ge=0, le=2**62),
             signature: str = Query(..., max_length=64, pattern=r"^[A-Za-z0-9_-]+$"),
             session: Session = Depends(get_session)) -> StreamingResponse:
    """An output file, through the signed URL from the request's output."""
    if not verify(file_id, expires, signature):
        raise NotFound("no such file, or its link has expired")
    f = repo.file(session, file_id)
    if f is None:
        raise NotFound("no such file, or its link has expired")
    return StreamingResponse(get_storage().iter_bytes(f.storage_key), media_type=f.content_type,
                             headers={"Content-Length": str(f.size),
                                      "Content-Disposition": f'inline; filename="{f.file_name}"'})


def _card(session: Session, model: Any) -> ModelCard:
    deployment = partners.serving_deployment(session, model)
    try:
        pricing = billing.pricing_at(session, model.id)
        price = PriceOut(unit=pricing.price_card.unit, unit_price_micros=pricing.price_card.unit_price_micros,
                         currency=pricing.price_card.currency)
        license_ = pricing.license.tier
    except NotFound:
        price, license_ = None, None
    return ModelCard(
        id=model.id, owner=model.partner.slug, name=model.slug, title=model.title,
        description=model.description, version=deployment.version_id if deployment else None,
        license=license_, price=price, pools=[deployment.pool] if deployment else [],
        inputs_schema=deployment.version.inputs_schema if deployment else {},
    )


@router.get("/models", response_model=list[ModelCard], tags=["catalog"])
def list_models(session: Session = Depends(get_session),
                _: Account = Depends(account_reader)) -> list[ModelCard]:
    """Every deployed model with its inputs schema, price card, license and pools."""
    return [c for c in (_card(session, m) for m in partners_repo.all_models(session)) if c.version]


@router.get("/models/{owner}/{model}", response_model=ModelCard, tags=["catalog"], responses=problems(404))
def get_model(owner: str, model: str, session: Session = Depends(get_session),
              _: Account = Depends(account_reader)) -> ModelCard:
    """One model's card."""
    found = partners_repo.model_by_slug(session, owner, model)
    if found is None:
        raise NotFound(f"no model {owner}/{model}")
    return _card(session, found)


@router.get("/usage", response_model=UsageOut, tags=["usage"], responses=problems(422))
def usage(since: dt.datetime | None = None, until: dt.datetime | None = None,
          account: Account = Depends(account_reader), session: Session = Depends(get_session)) -> UsageOut:
    """The account's usage and cost by model and day (default: this calendar month)."""
    now = utcnow()
    until = until or now + dt.timedelta(seconds=1)
    since = since or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidInput("since and until need a timezone, e.g. 2026-11-01T00:00:00Z")
    lines = billing.usage_summary(session, account.id, since=since, until=until)
    return UsageOut(since=since, until=until, total_micros=sum(x["amount_micros"] for x in lines),
                    lines=lines)

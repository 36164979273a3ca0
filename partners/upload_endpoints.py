"""Resumable package uploads of the partner API (`/v1/partner/uploads`)."""

from __future__ import annotations

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from kit.db import get_session
from kit.web import problem_response
from kit.web import router as make_router
from partners import repository as repo
from partners import uploads
from partners.auth import Actor, current_actor, current_partner
from partners.models import Partner, UploadSession
from partners.packaging import PackageRejected
from partners.schemas import UploadComplete, UploadCreate, UploadOut, VersionOut

router = make_router(tags=["partner uploads"])
_BINARY = {"requestBody": {"content": {"application/offset+octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "required": True}}


def upload_out(upload: UploadSession) -> UploadOut:
    """An upload as the API shows it, with the offset the server holds now."""
    offset = uploads.current_offset(upload) if upload.status == "open" else upload.received
    return UploadOut(id=upload.id, model_id=upload.model_id, size=upload.size, offset=offset,
                     status=upload.status, version_id=upload.version_id, error=upload.error,
                     created_at=upload.created_at, expires_at=upload.expires_at)


def _offset_headers(upload: UploadSession, offset: int) -> dict[str, str]:
    headers = {"Upload-Offset": str(offset), "Cache-Control": "no-store"}
    if upload.size is not None:
        headers["Upload-Length"] = str(upload.size)
    return headers


@router.post("/uploads", response_model=UploadOut, status_code=201)
def create_upload(
    body: UploadCreate, response: Response, actor: Actor = Depends(current_actor),
    session: Session = Depends(get_session),
) -> UploadOut:
    """Open a resumable upload for the model's next version; send chunks with PATCH."""
    upload = uploads.create_upload(session, actor.partner, model_slug=body.model, size=body.size)
    response.headers["Location"] = f"/v1/partner/uploads/{upload.id}"
    return upload_out(upload)


@router.get("/uploads", response_model=list[UploadOut])
def list_uploads(
    status: str | None = None, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> list[UploadOut]:
    """The partner's recent uploads, newest first."""
    return [upload_out(u) for u in repo.uploads_of(session, partner.id, status=status)]


@router.get("/uploads/{upload_id}", response_model=UploadOut)
def get_upload(
    upload_id: str, response: Response, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> UploadOut:
    """The upload's state and the offset to resume from."""
    out = upload_out(uploads.get_upload(session, partner, upload_id))
    response.headers["Cache-Control"] = "no-store"
    return out


@router.head("/uploads/{upload_id}", status_code=200)
def upload_offset(
    upload_id: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> Response:
    """`Upload-Offset` (and `Upload-Length`) headers: where to resume."""
    upload = uploads.get_upload(session, partner, upload_id)
    return Response(status_code=200, headers=_offset_headers(upload, upload_out(upload).offset))


@router.patch("/uploads/{upload_id}", status_code=204, openapi_extra=_BINARY)
async def upload_chunk(
    upload_id: str, request: Request,
    upload_offset: str | None = Header(default=None, description="Bytes already uploaded; where this chunk starts"),
    content_range: str | None = Header(default=None, description="bytes START-END/TOTAL, instead of Upload-Offset"),
    partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> Response:
    """Append a chunk at the current offset; answers the new `Upload-Offset`. 409 tells where to resume."""
    chunk = uploads.parse_chunk_headers(upload_offset, content_range)
    upload = await run_in_threadpool(uploads.get_upload, session, partner, upload_id)
    offset = await uploads.append_chunk(upload, chunk, request.stream())
    await run_in_threadpool(session.flush)
    return Response(status_code=204, headers=_offset_headers(upload, offset))


@router.post("/uploads/{upload_id}/complete", response_model=VersionOut, status_code=201,
             responses={422: {"description": "digest mismatch or package rejected (problem+json)"}})
def complete_upload(
    upload_id: str, body: UploadComplete, request: Request, partner: Partner = Depends(current_partner),
    session: Session = Depends(get_session),
) -> VersionOut | JSONResponse:
    """Check the SHA-256, validate the package and make it the model's next version."""
    try:
        version = uploads.complete_upload(session, partner, upload_id, sha256=body.sha256)
    except (PackageRejected, uploads.UploadFailed) as exc:
        # Answered, not raised, so the upload's rejected state is committed for the partner to see.
        session.flush()
        return problem_response(exc.status_code, exc.problem(request.url.path))
    return VersionOut.model_validate(version)


@router.delete("/uploads/{upload_id}", response_model=UploadOut)
def abort_upload(
    upload_id: str, partner: Partner = Depends(current_partner), session: Session = Depends(get_session),
) -> UploadOut:
    """Abandon an open upload; its bytes are deleted."""
    return upload_out(uploads.abort_upload(session, partner, upload_id))

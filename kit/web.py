"""HTTP edges shared by every router: problem+json errors and the route class."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from kit.db import CommitRoute, database_unreachable
from kit.errors import PROBLEM_BASE, AppError, DatabaseUnavailable

PROBLEM_JSON = "application/problem+json"


def router(**kwargs: object) -> APIRouter:
    """An APIRouter whose handlers commit the request's session once, after success."""
    return APIRouter(route_class=CommitRoute, **kwargs)  # type: ignore[arg-type]


def problem_response(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _app_error(request: Request, exc: AppError) -> JSONResponse:
    return problem_response(exc.status_code, exc.problem(request.url.path), exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {}
    detail = "Request is invalid"
    if first:
        detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    body = {"type": PROBLEM_BASE + "invalid-request", "title": "Invalid request", "status": 422,
            "detail": detail, "errors": errors, "instance": request.url.path}
    return problem_response(422, body)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body = {"type": PROBLEM_BASE + f"http-{exc.status_code}", "title": str(exc.detail),
            "status": exc.status_code, "detail": str(exc.detail), "instance": request.url.path}
    return problem_response(exc.status_code, body, getattr(exc, "headers", None))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unreachable(exc):
        raise exc  # a failed query is a bug: a 500, with its traceback in the log
    return await _app_error(request, DatabaseUnavailable())


def install_error_handlers(app: FastAPI) -> None:
    """Render AppError, validation errors and routing errors as problem+json; a database that
    is away as 503 with `Retry-After`."""
    app.add_exception_handler(AppError, _app_error)  # type: ignore[arg-type]
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]

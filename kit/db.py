"""Database plumbing: the declarative Base, engines, and the one commit point.

A request's session is committed by `CommitRoute` after the handler returns and before the
response is sent; a task's by `session_scope()`. Services only flush.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import DateTime, MetaData, create_engine, event, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator
from starlette.concurrency import run_in_threadpool

from kit.settings import get_settings

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use kit.db.utcnow()")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    """Base of every table; constraint names are stable so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime()}


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`, tuned per backend."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A database host that stops answering (rather than refusing) fails a connect in seconds,
    # not after the kernel's two-minute SYN timeout; pre-ping replaces connections a restart broke.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args)


@functools.cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    return make_engine(get_settings().db_url)


@functools.cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def reset_engine() -> None:
    """Forget the cached engine (settings changed, or a forked process)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session for a task or script: commits once at the end, rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: the request's session, committed by `CommitRoute`."""
    session = get_sessionmaker()()
    request.state.db = session
    try:
        yield session
    finally:
        session.close()


class CommitRoute(APIRoute):
    """Commits the request's session after the handler succeeds, before the response leaves."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def commit_then_respond(request: Request) -> Response:
            try:
                response = await handler(request)
            except BaseException:
                session = getattr(request.state, "db", None)
                if session is not None:
                    await run_in_threadpool(session.rollback)
                raise
            session = getattr(request.state, "db", None)
            if session is not None:
                await run_in_threadpool(session.commit)
            return response

        return commit_then_respond


# -- after-commit hooks: what must happen only if the transaction lands ------------------

def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once `session` commits; drop it if the session rolls back."""
    if not session.in_transaction():
        session.begin()  # tie the hook to a transaction, so a rollback can drop it
    session.info.setdefault("after_commit", []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            # The transaction has landed: its answer must not turn into an error, nor may one
            # failed step (a task the broker would not take) stop the others. What follows a
            # commit is redone from the rows: tasks by the housekeeping sweeps, events by
            # readers that fall back on the database.
            log.exception("a step after commit failed; it is redone from the database")


@event.listens_for(Session, "after_transaction_end")
def _drop_after_commit(session: Session, transaction: Any) -> None:
    # The outermost transaction ended without committing (commit pops the hooks first).
    if transaction.parent is None and not transaction.nested:
        session.info.pop("after_commit", None)


# -- a database that is away ----------------------------------------------------------------

# Connection exceptions (class 08) and the server shutting down, crashed or starting up.
_AWAY_SQLSTATES = ("57P01", "57P02", "57P03")


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away (down, restarting, unreachable, pool exhausted),
    as opposed to a query that failed: the first is worth a retry, the second is a bug."""
    if isinstance(exc, sa_exc.TimeoutError):  # no connection came free from the pool in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    # A failed connect or a dropped socket carries no SQLSTATE; deadlocks and cancels do.
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _AWAY_SQLSTATES


# -- schema state --------------------------------------------------------------------------

def hold_advisory_lock(key: int, engine: Engine | None = None) -> Connection | None:
    """Take PostgreSQL's session advisory lock `key` on a connection of its own.

    Returns that connection while the lock is held (closing it, or the process dying,
    releases the lock), or None when another session holds it.
    """
    conn = (engine or get_engine()).connect()
    try:
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
        conn.commit()
    except BaseException:
        conn.close()
        raise
    if not held:
        conn.close()
        return None
    return conn


class DatabaseNotMigrated(RuntimeError):
    """The database schema is behind the code's migrations."""


def assert_migrated(engine: Engine | None = None) -> None:
    """Refuse to run on a database whose schema is not at the migrations' head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from kit.migrate import alembic_config

    engine = engine or get_engine()
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        has_tables = bool(inspect(conn).get_table_names())
    if current != heads:
        state = "empty" if not has_tables and not current else f"at {sorted(current) or 'none'}"
        raise DatabaseNotMigrated(
            f"The database ({engine.url.render_as_string(hide_password=True)}) is {state}, "
            f"but the code needs migration {sorted(heads)}. Run `mediagate migrate` first."
        )

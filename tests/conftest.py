"""Shared fixtures: real PostgreSQL and Redis, one rolled-back transaction per test.

Each test run gets its own database (`MEDIAGATE_TEST_DB`, default `mediagate_test`), built
by the real migrations. Set `MEDIAGATE_TEST_DB` / `MEDIAGATE_TEST_REDIS_DB` to run two
suites side by side.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_HOST = os.environ.get("MEDIAGATE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
TEST_DB = os.environ.get("MEDIAGATE_TEST_DB", "mediagate_test")
REDIS_DB = os.environ.get("MEDIAGATE_TEST_REDIS_DB", "15")
DATA_DIR = Path(tempfile.mkdtemp(prefix="mediagate-test-"))

if not os.path.exists("/dev/nvidiactl"):
    # No GPU: Triton kernels run in its interpreter, whichever test imports Triton first.
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.update(
    MEDIAGATE_ENV="test",
    MEDIAGATE_DATABASE_URL=f"{PG_HOST}/{TEST_DB}",
    MEDIAGATE_REDIS_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    MEDIAGATE_BROKER_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
    MEDIAGATE_DATA_DIR=str(DATA_DIR),
)

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from kit.db import Base, get_engine, reset_engine  # noqa: E402
from kit.settings import get_settings  # noqa: E402


def _recreate_database() -> None:
    admin = create_engine(f"{PG_HOST}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": TEST_DB})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}"'))
        conn.execute(text(f'CREATE DATABASE "{TEST_DB}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The test database, freshly created and migrated to head."""
    from kit.migrate import upgrade
    from migrations.env_models import import_all_models

    get_settings.cache_clear()
    reset_engine()
    _recreate_database()
    upgrade(get_settings().db_url)
    import_all_models()
    eng = get_engine()
    # Tables a change adds before its migration is written still get created here;
    # tests/test_migrations.py fails until the migration exists.
    Base.metadata.create_all(eng, checkfirst=True)
    yield eng
    reset_engine()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test.

    Code under test may commit: commits become savepoints of the outer transaction.
    """
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint",
                      expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


def truncate_all(engine: Engine, attempts: int = 5) -> None:
    """Empty every table. A process the test started may still be writing as it winds down
    (a worker finishing its last request): when PostgreSQL picks the TRUNCATE as a deadlock
    victim, or its locks do not come within the timeout, it is tried again."""
    from sqlalchemy.exc import DBAPIError

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    if not tables:
        return
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            return
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
            if code not in ("40P01", "55P03") or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


@pytest.fixture
def committed(engine: Engine) -> Iterator[Engine]:
    """For tests whose data other processes must see: every table is emptied afterwards."""
    yield engine
    truncate_all(engine)


@pytest.fixture
def redis_client():
    """The test Redis database, emptied before and after."""
    import redis

    client = redis.Redis.from_url(get_settings().redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()

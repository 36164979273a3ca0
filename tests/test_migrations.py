"""Migrations build the schema on SQLite and PostgreSQL, match the models, and are enforced."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from kit.db import Base, DatabaseNotMigrated, assert_migrated, make_engine
from kit.migrate import upgrade
from migrations.env_models import import_all_models


def _diff(engine: Engine) -> list:
    import_all_models()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_sqlite_migrates_from_empty_and_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    engine = make_engine(url)
    with pytest.raises(DatabaseNotMigrated, match="mediagate migrate"):
        assert_migrated(engine)
    upgrade(url)
    assert_migrated(engine)
    assert "requests" in inspect(engine).get_table_names()
    assert _diff(engine) == []


def test_postgres_migrates_from_empty_and_matches_models() -> None:
    from sqlalchemy import create_engine, make_url, text

    from kit.settings import get_settings

    base = make_url(get_settings().db_url)
    name = f"{base.database}_migrations"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade(url)
        assert_migrated(engine)
        assert _diff(engine) == [], "models changed without a migration: run `make migration`"
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_sqlite_downgrades_to_empty_and_back(tmp_path: Path) -> None:
    from alembic import command

    from kit.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert [t for t in inspect(make_engine(url)).get_table_names() if t != "alembic_version"] == []
    upgrade(url)
    assert _diff(make_engine(url)) == []

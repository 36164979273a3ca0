"""Alembic environment: every package's models.py is imported so autogenerate sees all tables."""

from __future__ import annotations

from alembic import context

from kit.db import Base, make_engine
from kit.settings import get_settings
from migrations.env_models import import_all_models

import_all_models()
target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().db_url
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        engine = make_engine(url)
        with engine.connect() as connection:
            _configure_and_run(connection)
        engine.dispose()
    else:
        _configure_and_run(connectable)


def _configure_and_run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()

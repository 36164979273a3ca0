"""One settings object for every process, read from `MEDIAGATE_*` environment variables."""

from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"
DEV_MASTER_KEY = "ZGV2LW9ubHktbWFzdGVyLWtleS0zMi1ieXRlcyEhISE="  # base64 of 32 dev bytes
DEV_ADMIN_KEY = "mga_dev_admin_key"


class Settings(BaseSettings):
    """Process configuration; embedded defaults run everything on one machine."""

    model_config = SettingsConfigDict(env_prefix="MEDIAGATE_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "production"] = "dev"
    data_dir: Path = Path("var")
    database_url: str = ""
    # Empty means the embedded broker: kombu's SQLAlchemy transport on a SQLite file.
    broker_url: str = ""
    # Empty means no Redis: events are read from the database instead of pub/sub.
    redis_url: str = ""
    public_url: str = "http://127.0.0.1:8000"

    secret_key: str = DEV_SECRET
    master_key: str = DEV_MASTER_KEY
    # Platform operators' key for the admin API (onboarding partners and customer accounts).
    admin_key: str = DEV_ADMIN_KEY

    # Runner processes: how long a model may take to set up and to answer one request.
    runner_setup_timeout_s: float = 600.0
    runner_predict_timeout_s: float = 600.0
    runner_python: str = ""

    file_url_ttl_s: int = 3600
    # Strict-Transport-Security max-age on every answer; unset means a year in production and
    # none elsewhere (a plain-HTTP development server must not pin browsers to HTTPS).
    hsts_max_age_s: int | None = Field(default=None, ge=0)
    telemetry_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"

    worker_concurrency: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _refuse_dev_secrets_outside_dev(self) -> Settings:
        if self.env == "production" and (
            self.secret_key == DEV_SECRET or self.master_key == DEV_MASTER_KEY
            or self.admin_key == DEV_ADMIN_KEY
        ):
            raise ValueError(
                "MEDIAGATE_SECRET_KEY, MEDIAGATE_MASTER_KEY and MEDIAGATE_ADMIN_KEY must be set "
                "in production; the built-in development values are public"
            )
        return self

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to a SQLite file under the data directory."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'mediagate.db').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        """The Celery broker URL, defaulting to the embedded SQLite broker."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def storage_root(self) -> Path:
        return self.data_dir / "storage"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret."""
    return secrets.token_urlsafe(nbytes)

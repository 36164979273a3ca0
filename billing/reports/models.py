"""Finance staff's API keys: the `finance` role for the finance pages and exports."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class FinanceKey(Base):
    """A key that grants the finance role; stored as a digest, shown once."""

    __tablename__ = "finance_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fkey"))
    name: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

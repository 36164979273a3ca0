"""Moderation entry points used on the request path: `check_input` and `check_output`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from kit.settings import get_settings


@dataclass
class Verdict:
    """The outcome of a check: `passed`, `flagged` (allowed, recorded) or `blocked`."""

    decision: str
    categories: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def blocked(self) -> bool:
        return self.decision == "blocked"


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def check_input(session: Session, *, account_id: str, model_id: str, input: dict[str, Any]) -> Verdict:
    """Check every text input of a request before it is queued."""
    terms = [t.strip().lower() for t in get_settings().blocklist.split(",") if t.strip()]
    for text in _texts(input):
        words = set(re.findall(r"\w+", text.lower()))
        hit = next((t for t in terms if t in words), None)
        if hit:
            return Verdict("blocked", ["blocklist"], "the input contains a blocked term")
    return Verdict("passed")


def check_output(
    session: Session, *, account_id: str, model_id: str, request_id: str, files: list[Path]
) -> Verdict:
    """Check a request's output files before the customer can fetch them."""
    return Verdict("passed")

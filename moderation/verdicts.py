"""What a check returns to its caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moderation.categories import BLOCKED


@dataclass
class FileVerdict:
    """The outcome for one output file: `keep`, `replace` (with `replace_with`) or `drop`."""

    path: Path
    decision: str
    action: str
    categories: list[str] = field(default_factory=list)
    replace_with: Path | None = None
    sha256: str = ""
    reason: str | None = None


@dataclass
class Verdict:
    """The outcome of a check: `passed`, `flagged` (allowed, recorded) or `blocked`."""

    decision: str
    categories: list[str] = field(default_factory=list)
    reason: str | None = None
    record_id: str | None = None
    stage: str = "input"
    scores: dict[str, float] = field(default_factory=dict)
    policy_version: str | None = None
    files: list[FileVerdict] = field(default_factory=list)
    escalated: bool = False
    account_suspended: bool = False
    notes: list[str] = field(default_factory=list)
    # The check's record when the caller writes it (`check_input(..., defer_record=True)`),
    # column by column; None once it is written.
    record: dict[str, Any] | None = None

    @property
    def blocked(self) -> bool:
        """True when the request must not run (input) or its outputs must not be stored."""
        return self.decision == BLOCKED

    @property
    def replacements(self) -> dict[Path, Path]:
        """Original output file → blurred stand-in to store instead."""
        return {f.path: f.replace_with for f in self.files if f.replace_with is not None}

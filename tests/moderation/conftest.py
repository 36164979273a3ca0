"""Fixtures for the moderation tests: settings overrides, hash lists, generated images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moderation.config import get_moderation_settings


@pytest.fixture
def moderation_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set `MEDIAGATE_MODERATION_*` variables for one test; settings are re-read around it."""
    get_moderation_settings.cache_clear()
    yield monkeypatch
    get_moderation_settings.cache_clear()


@pytest.fixture
def hash_lists(tmp_path: Path, moderation_env: pytest.MonkeyPatch):
    """Write hash lists for one test: `hash_lists({"csam": [hex, ...]})` configures them."""

    def configure(lists: dict[str, list[str]]) -> list[Path]:
        paths = []
        for category, hashes in lists.items():
            path = tmp_path / f"{category}-list.pdq"
            path.write_text("".join(f"{h}\n" for h in hashes))
            paths.append(path)
        moderation_env.setenv("MEDIAGATE_MODERATION_HASH_LISTS",
                              ",".join(f"{c}={p}" for c, p in zip(lists, paths, strict=True)))
        get_moderation_settings.cache_clear()
        return paths

    return configure

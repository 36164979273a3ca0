"""Moderation settings, read from `MEDIAGATE_MODERATION_*` environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kit.settings import get_settings


class ModerationSettings(BaseSettings):
    """Limits and thresholds of the checks; defaults suit a production gateway."""

    model_config = SettingsConfigDict(env_prefix="MEDIAGATE_MODERATION_", env_file=".env",
                                      extra="ignore")

    # Hash lists: `category=path` entries, comma separated, on top of every file found
    # under `<data_dir>/hashlists/<category>/`.
    hash_lists: str = ""
    # PDQ matching: the industry's usual distance for a match, and the quality under which
    # an image's hash says too little to be matched at all (flat or tiny images).
    pdq_max_distance: int = 31
    pdq_min_quality: int = 50

    # NSFW detection: the detector score at which exposed nudity counts as `sexual`, and
    # the ONNX model (empty: the one NudeNet ships).
    nsfw_threshold: float = 0.6
    nsfw_model_path: str = ""
    nsfw_threads: int = 1
    # The profanity classifier's probability that counts as a signal.
    profanity_threshold: float = 0.85

    # Inputs and files beyond these are not checked but blocked, so nothing passes unseen.
    max_text_chars: int = 100_000
    max_file_bytes: int = 256 * 1024 * 1024
    max_image_pixels: int = 80_000_000
    video_sample_frames: int = 8

    # Policy layers and account holds are kept this long in each process (0: not cached);
    # changes reach every process at once through Redis, this is the bound without it.
    cache_ttl_s: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _no_cache_in_tests(self) -> ModerationSettings:
        # Tests write policies and holds straight into rolled-back transactions.
        if "cache_ttl_s" not in self.model_fields_set and get_settings().env == "test":
            self.cache_ttl_s = 0.0
        return self

    @property
    def hash_list_dir(self) -> Path:
        return get_settings().data_dir / "hashlists"

    @property
    def evidence_dir(self) -> Path:
        return get_settings().data_dir / "evidence"


@functools.cache
def get_moderation_settings() -> ModerationSettings:
    """The process-wide moderation settings, read once."""
    return ModerationSettings()

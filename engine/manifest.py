"""The model package manifest (`mediagate.toml`): plain data, safe for any process to import."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

BILLABLE_UNITS = ("requests", "images", "megapixels", "video_seconds", "gpu_seconds")
LICENSE_TIERS = ("open", "revenue_share", "partner_priced")


class ManifestError(ValueError):
    """The manifest is missing, malformed or names something invalid."""


@dataclass(frozen=True)
class Hardware:
    gpu: str | None = None
    gpu_count: int = 0
    memory_gb: int = 0


@dataclass(frozen=True)
class Manifest:
    """What a package declares about itself; the inputs schema is derived from its code."""

    name: str
    entrypoint: str
    billable_unit: str = "requests"
    license_tier: str = "open"
    license_terms: str | None = None
    hardware: Hardware = field(default_factory=Hardware)
    inputs_schema: dict[str, Any] = field(default_factory=dict)
    outputs_schema: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.entrypoint.partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.entrypoint.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["hardware"] = Hardware(**(data.get("hardware") or {}))
        return cls(**data)


def _check_entrypoint(entrypoint: str) -> str:
    module, sep, cls = entrypoint.partition(":")
    module = module.removesuffix(".py").replace("/", ".")
    parts = module.split(".")
    if not sep or not cls.isidentifier() or not all(p.isidentifier() for p in parts):
        raise ManifestError(f"entrypoint must look like 'module:Class', got {entrypoint!r}")
    return f"{module}:{cls}"


def parse_manifest(text: str) -> Manifest:
    """Parse `mediagate.toml`; raises ManifestError with the field at fault."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"mediagate.toml is not valid TOML: {exc}") from exc
    model = doc.get("model")
    if not isinstance(model, dict):
        raise ManifestError("mediagate.toml needs a [model] table")
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError("[model] name is required")
    entrypoint = model.get("entrypoint")
    if not isinstance(entrypoint, str):
        raise ManifestError("[model] entrypoint is required, e.g. 'predict:Predictor'")
    unit = model.get("billable_unit", "requests")
    if unit not in BILLABLE_UNITS:
        raise ManifestError(f"[model] billable_unit must be one of {', '.join(BILLABLE_UNITS)}")
    license_ = doc.get("license", {})
    tier = license_.get("tier", "open")
    if tier not in LICENSE_TIERS:
        raise ManifestError(f"[license] tier must be one of {', '.join(LICENSE_TIERS)}")
    hw = doc.get("hardware", {})
    try:
        hardware = Hardware(
            gpu=hw.get("gpu"), gpu_count=int(hw.get("gpu_count", 0)), memory_gb=int(hw.get("memory_gb", 0))
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"[hardware] has a non-integer count: {exc}") from exc
    return Manifest(
        name=name,
        entrypoint=_check_entrypoint(entrypoint),
        billable_unit=unit,
        license_tier=tier,
        license_terms=license_.get("terms"),
        hardware=hardware,
    )

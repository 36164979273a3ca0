"""The model package manifest (`mediagate.toml`): plain data, safe for any process to import.

A Cog project's `cog.yaml` maps onto the same Manifest (`parse_cog_yaml`), and a manifest
carried as JSON in an image label is read back with `manifest_from_json`, which checks
every field as strictly as the TOML parser does because the label comes from the partner.
"""

from __future__ import annotations

import re
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
    # The method the runner calls: `predict` (engine.Model, Cog BasePredictor) or `run`
    # (Cog BaseRunner).
    method: str = "predict"
    # What the project asks of its runtime (e.g. Cog's python_version and packages); the
    # sandbox runtime is fixed, so this is informational and shown to the partner.
    runtime: dict[str, Any] = field(default_factory=dict)

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
    module = module.strip().removeprefix("./").removesuffix(".py").replace("/", ".")
    parts = module.split(".")
    if not sep or not cls.isidentifier() or not all(p.isidentifier() for p in parts):
        raise ManifestError(f"entrypoint must look like 'module:Class', got {entrypoint!r}")
    return f"{module}:{cls}"


def parse_manifest(text: str) -> Manifest:
    """Parse `mediagate.toml`; raises ManifestError with the field at fault."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
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
    if not isinstance(license_, dict):
        raise ManifestError("[license] must be a table")
    tier = license_.get("tier", "open")
    if tier not in LICENSE_TIERS:
        raise ManifestError(f"[license] tier must be one of {', '.join(LICENSE_TIERS)}")
    hw = doc.get("hardware", {})
    if not isinstance(hw, dict):
        raise ManifestError("[hardware] must be a table")
    terms = license_.get("terms")
    if terms is not None and not isinstance(terms, str):
        raise ManifestError("[license] terms must be a string")
    outputs = doc.get("outputs_schema", {})
    if not isinstance(outputs, dict):
        raise ManifestError("[outputs_schema] must be a table (a JSON Schema)")
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
        license_terms=terms,
        hardware=hardware,
        outputs_schema=outputs,
    )


_MANIFEST_KEYS = {f for f in Manifest.__dataclass_fields__}
_IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ManifestError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def manifest_from_json(data: Any) -> Manifest:
    """A Manifest from untrusted JSON (an image label), checked field by field."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest label must be a JSON object")
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise ManifestError(f"the manifest has unknown fields: {', '.join(sorted(map(str, unknown)))}")
    name = _expect(data.get("name"), str, "name")
    if not name:
        raise ManifestError("name is required")
    entrypoint = _check_entrypoint(_expect(data.get("entrypoint"), str, "entrypoint"))
    unit = data.get("billable_unit", "requests")
    if unit not in BILLABLE_UNITS:
        raise ManifestError(f"billable_unit must be one of {', '.join(BILLABLE_UNITS)}")
    tier = data.get("license_tier", "open")
    if tier not in LICENSE_TIERS:
        raise ManifestError(f"license_tier must be one of {', '.join(LICENSE_TIERS)}")
    terms = data.get("license_terms")
    if terms is not None:
        _expect(terms, str, "license_terms")
    hw = _expect(data.get("hardware") or {}, dict, "hardware")
    if set(hw) - {"gpu", "gpu_count", "memory_gb"}:
        raise ManifestError("hardware has unknown fields")
    gpu = hw.get("gpu")
    if gpu is not None:
        _expect(gpu, str, "hardware.gpu")
    hardware = Hardware(
        gpu=gpu,
        gpu_count=_expect(hw.get("gpu_count", 0), int, "hardware.gpu_count"),
        memory_gb=_expect(hw.get("memory_gb", 0), int, "hardware.memory_gb"),
    )
    method = data.get("method", "predict")
    if method not in ("predict", "run"):
        raise ManifestError("method must be 'predict' or 'run'")
    return Manifest(
        name=name,
        entrypoint=entrypoint,
        billable_unit=unit,
        license_tier=tier,
        license_terms=terms,
        hardware=hardware,
        inputs_schema=_expect(data.get("inputs_schema") or {}, dict, "inputs_schema"),
        outputs_schema=_expect(data.get("outputs_schema") or {}, dict, "outputs_schema"),
        method=method,
        runtime=_expect(data.get("runtime") or {}, dict, "runtime"),
    )


def parse_cog_yaml(text: str, *, name: str | None = None) -> Manifest:
    """A Manifest for a Cog project from its `cog.yaml` (`run:` or the older `predict:`).

    The name comes from `image:` (its last path part) or `name`; a GPU build bills GPU
    seconds, as Cog models are billed by time.
    """
    import yaml  # only the packaging side reads cog.yaml; the sandbox never does

    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise ManifestError(f"cog.yaml is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError("cog.yaml must be a mapping")
    run, predict = doc.get("run"), doc.get("predict")
    entrypoint = run if run is not None else predict
    if not isinstance(entrypoint, str):
        raise ManifestError("cog.yaml needs run: \"run.py:Runner\" or predict: \"predict.py:Predictor\"")
    build = doc.get("build") or {}
    if not isinstance(build, dict):
        raise ManifestError("cog.yaml build: must be a mapping")
    gpu = build.get("gpu", False)
    if not isinstance(gpu, bool):
        raise ManifestError("cog.yaml build.gpu must be true or false")
    image = doc.get("image")
    if isinstance(image, str) and image:
        name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    name = (name or "model").lower()
    if not _IMAGE_NAME.fullmatch(name):
        raise ManifestError(f"cannot derive a model name from {name!r}; set image: in cog.yaml")
    runtime: dict[str, Any] = {"format": "cog"}
    for key in ("python_version", "python_packages", "python_requirements", "system_packages", "cuda"):
        value = build.get(key)
        if isinstance(value, str | list) and all(isinstance(v, str) for v in
                                                (value if isinstance(value, list) else [value])):
            runtime[key] = value
    concurrency = doc.get("concurrency")
    if isinstance(concurrency, dict) and isinstance(concurrency.get("max"), int):
        runtime["concurrency"] = concurrency["max"]
    return Manifest(
        name=name,
        entrypoint=_check_entrypoint(entrypoint),
        billable_unit="gpu_seconds" if gpu else "requests",
        hardware=Hardware(gpu=None, gpu_count=1 if gpu else 0),
        method="run" if run is not None else "predict",
        runtime=runtime,
    )

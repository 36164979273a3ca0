"""Find a package's manifest and derive its schemas from the entrypoint's source.

Shared by the builder (reading a directory on disk) and the reader (reading the final tree
of an archive), so a package gets the same manifest whichever way it arrives.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from engine.manifest import (
    Manifest,
    ManifestError,
    manifest_from_json,
    parse_cog_yaml,
    parse_manifest,
)
from engine.schema import EntrypointNotFound, SchemaError, model_schemas
from partners.packaging.rules import PackageRejected

MANIFEST_LABEL = "dev.mediagate.manifest"
ROOT_LABEL = "dev.mediagate.root"
TITLE_LABEL = "org.opencontainers.image.title"
MANIFEST_FILES = ("mediagate.toml", "cog.yaml", "cog.yml")

# (path relative to the tree root) -> "file" | "dir" | None, following symlinks
KindOf = Callable[[str], str | None]
# (path) -> text, or None when the file exists but its text was not kept
ReadText = Callable[[str], str | None]


def join(root: str, path: str) -> str:
    """A path under `root` (both relative to the tree root)."""
    return f"{root}/{path}" if root else path


def labels_of(config: dict[str, Any] | None) -> dict[str, str]:
    """The string labels of an image config."""
    inner = (config or {}).get("config") or {}
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _read(read_text: ReadText, path: str, what: str) -> str:
    text = read_text(path)
    if text is None:
        raise PackageRejected(f"{what} is too large to read", entry=path, reason="source-too-large")
    return text


def declared_manifest(kind_of: KindOf, read_text: ReadText, root: str, *,
                      labels: dict[str, str], default_name: str) -> tuple[Manifest, list[str]]:
    """The manifest a package declares, and the method order its entrypoint is read with.

    A `dev.mediagate.manifest` label wins; otherwise `mediagate.toml`, then `cog.yaml`.
    """
    label = labels.get(MANIFEST_LABEL)
    entry: str | None = None
    try:
        if label is not None:
            entry = f"label {MANIFEST_LABEL}"
            try:
                data = json.loads(label)
            except (ValueError, RecursionError) as exc:
                raise ManifestError(f"the manifest label is not valid JSON: {exc}") from exc
            manifest = manifest_from_json(data)
        elif kind_of(join(root, "mediagate.toml")) == "file":
            entry = join(root, "mediagate.toml")
            manifest = parse_manifest(_read(read_text, entry, "mediagate.toml"))
        else:
            entry = next((join(root, n) for n in MANIFEST_FILES[1:] if kind_of(join(root, n)) == "file"),
                         None)
            if entry is None:
                raise PackageRejected(
                    "no manifest: add mediagate.toml (or a Cog cog.yaml) to the model directory",
                    entry=join(root, "mediagate.toml"), reason="missing-manifest")
            manifest = parse_cog_yaml(_read(read_text, entry, "cog.yaml"),
                                      name=labels.get(TITLE_LABEL) or default_name)
    except ManifestError as exc:
        raise PackageRejected(str(exc), entry=entry, reason="bad-manifest") from exc
    methods = [manifest.method, *(m for m in ("predict", "run") if m != manifest.method)]
    return manifest, methods


def find_root(kind_of: KindOf, candidates: list[str], labels: dict[str, str],
              working_dir: str | None) -> str:
    """The model directory inside the tree: the label, the image's WorkingDir if it holds a
    manifest, else the shallowest directory holding one (it must be unique)."""
    if ROOT_LABEL in labels:
        root = labels[ROOT_LABEL].strip("/")
        if kind_of(root) != "dir":
            raise PackageRejected(f"the model directory {root!r} is not in the package",
                                  entry=f"label {ROOT_LABEL}", reason="bad-manifest")
        return root
    if working_dir is not None and working_dir in candidates:
        return working_dir
    if not candidates:
        if MANIFEST_LABEL in labels:
            if working_dir is not None and kind_of(working_dir) == "dir":
                return working_dir
            return ""
        raise PackageRejected(
            "no manifest: add mediagate.toml (or a Cog cog.yaml) to the model directory",
            entry="mediagate.toml", reason="missing-manifest")
    depth = min(c.count("/") + (c != "") for c in candidates)
    shallowest = sorted(c for c in candidates if c.count("/") + (c != "") == depth)
    if len(shallowest) > 1:
        raise PackageRejected(
            f"several model directories: {', '.join(s or '/' for s in shallowest)}",
            entry=join(shallowest[1], "mediagate.toml"), reason="ambiguous-manifest")
    return shallowest[0]


def with_schemas(manifest: Manifest, methods: list[str], kind_of: KindOf, read_text: ReadText,
                 root: str) -> Manifest:
    """The manifest with the inputs schema (and, unless declared, outputs) read from code."""
    def load(module: str) -> tuple[str, bool] | None:
        base = join(root, module.replace(".", "/"))
        for path, is_package in ((base + ".py", False), (base + "/__init__.py", True)):
            if kind_of(path) == "file":
                return _read(read_text, path, f"module {module}"), is_package
        return None

    try:
        found = model_schemas(load, manifest.module, manifest.class_name, tuple(methods))
    except EntrypointNotFound as exc:
        raise PackageRejected(f"entrypoint {manifest.entrypoint}: {exc}",
                              entry=join(root, manifest.module.replace(".", "/") + ".py"),
                              reason="entrypoint-missing") from exc
    except SchemaError as exc:
        raise PackageRejected(f"entrypoint {manifest.entrypoint}: {exc}",
                              entry=join(root, manifest.module.replace(".", "/") + ".py"),
                              reason="bad-schema") from exc
    return dataclasses.replace(
        manifest,
        method=found.method,
        inputs_schema=found.inputs,
        outputs_schema=manifest.outputs_schema or found.outputs,
    )


def manifest_dirs(paths: list[str], kind_of: KindOf) -> list[str]:
    """Directories holding a manifest file, from the tree's file paths."""
    dirs = set()
    for path in paths:
        parent, _, base = path.rpartition("/")
        if base in MANIFEST_FILES and kind_of(path) == "file":
            dirs.add(parent)
    return sorted(dirs)

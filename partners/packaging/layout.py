"""Which blobs make the image: index -> manifest -> config -> layers, per the OCI image spec.

Also reads `docker save`'s older `manifest.json` layout. Works on what the streaming pass
kept (small JSON documents, blob digests and kinds), never on blob contents.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from partners.packaging.rules import PackageLimits, PackageRejected

OCI_LAYOUT = "oci-layout"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

TAR_TYPES = {
    LAYER_TAR,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
}
GZIP_TYPES = {
    LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
ZSTD_TYPES = {LAYER_ZSTD, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"}
_DIGEST = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
_BLOB_PATH = re.compile(r"blobs/(sha256/[a-f0-9]{64}|sha512/[a-f0-9]{128})")


def blob_path_digest(path: str) -> str | None:
    """`sha256:<hex>` for an OCI blob path `blobs/sha256/<hex>`, else None."""
    if _BLOB_PATH.fullmatch(path):
        algorithm, _, hexdigest = path[len("blobs/"):].partition("/")
        return f"{algorithm}:{hexdigest}"
    return None


@dataclass
class BlobRecord:
    """What the streaming pass learned about one archive member that may be a blob."""

    path: str
    digest: str           # sha256 of the content (or the algorithm its name asks for)
    size: int
    kind: str             # tar, tar+gzip, json, zstd, gzip, other
    offset: int           # where its data starts in the (uncompressed) archive stream
    entries: list[Any] | None = None  # the layer's checked entries when it is a tar
    diff_id: str | None = None        # sha256 of the uncompressed tar
    doc: bytes | None = None          # the bytes of a small JSON document
    error: PackageRejected | None = None  # why its entries were refused, if they were


@dataclass
class LayerRef:
    """A layer as the image names it."""

    path: str             # the blob's archive path ("" for a plain directory archive)
    media_type: str
    digest: str
    size: int


@dataclass
class Layout:
    """The image chosen from the archive."""

    format: str           # oci, docker, directory
    manifest_digest: str | None
    manifest_path: str | None
    config_path: str | None
    config: dict[str, Any]
    layers: list[LayerRef]


def _bad(message: str, entry: str | None = None, reason: str = "bad-layout") -> PackageRejected:
    return PackageRejected(message, entry=entry, reason=reason)


def _json(blob: BlobRecord | None, what: str, entry: str) -> Any:
    if blob is None:
        raise _bad(f"the archive has no {what}", entry, "missing-blob" if entry.startswith("blobs/")
                   else "bad-layout")
    if blob.doc is None:
        raise _bad(f"{what} is not a JSON document of a readable size", entry)
    try:
        return json.loads(blob.doc)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"{what} is not valid JSON: {exc}", entry) from exc


class _Resolver:
    def __init__(self, blobs: dict[str, BlobRecord], aliases: dict[str, str],
                 limits: PackageLimits) -> None:
        self.blobs = blobs
        self.aliases = aliases
        self.limits = limits

    def blob(self, path: str) -> BlobRecord | None:
        for _ in range(8):
            if path in self.blobs:
                return self.blobs[path]
            if path not in self.aliases:
                return None
            path = self.aliases[path]
        return None

    def descriptor(self, desc: Any, what: str) -> tuple[BlobRecord, str]:
        """The blob a descriptor names, its size and digest checked."""
        if not isinstance(desc, dict):
            raise _bad(f"{what} descriptor is not an object")
        digest, size, media = desc.get("digest"), desc.get("size"), desc.get("mediaType", "")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise _bad(f"{what} descriptor has an invalid digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"{what} descriptor has an invalid size {size!r}", f"blobs/{digest.replace(':', '/')}")
        if not isinstance(media, str):
            raise _bad(f"{what} descriptor has an invalid media type")
        path = "blobs/" + digest.replace(":", "/", 1)
        blob = self.blob(path)
        if blob is None:
            raise _bad(f"{what} {digest} is not in the archive", path, "missing-blob")
        if blob.digest != digest:
            raise _bad(f"{what} content does not match its digest {digest}", path, "digest-mismatch")
        if blob.size != size:
            raise _bad(f"{what} is {blob.size} bytes, its descriptor says {size}", path,
                       "size-mismatch")
        return blob, media

    def pick_manifest(self, index: Any, entry: str, depth: int = 0) -> tuple[BlobRecord, Any]:
        if depth > 4:
            raise _bad("image indexes nest too deeply", entry)
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise _bad("the image index has no manifests list", entry)
        images = []
        for desc in index["manifests"]:
            if not isinstance(desc, dict):
                raise _bad("the image index lists a non-object", entry)
            annotations = desc.get("annotations") or {}
            platform = desc.get("platform") or {}
            if not isinstance(annotations, dict) or not isinstance(platform, dict):
                raise _bad("the image index has malformed annotations or platform", entry)
            if annotations.get("vnd.docker.reference.type") == "attestation-manifest" or \
                    platform.get("os") == "unknown":
                continue
            images.append(desc)
        if not images:
            raise _bad("the image index names no image", entry)
        if len(images) > 1:
            linux = [d for d in images if (d.get("platform") or {}).get("os") in (None, "linux")
                     and (d.get("platform") or {}).get("architecture") in (None, "amd64")]
            if len(linux) != 1:
                raise _bad(f"the archive holds {len(images)} images; package exactly one", entry)
            images = linux
        blob, media = self.descriptor(images[0], "image manifest")
        doc = _json(blob, "image manifest", blob.path)
        if not isinstance(doc, dict):
            raise _bad("the image manifest is not an object", blob.path)
        kind = media or doc.get("mediaType", "")
        if kind in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
            return self.pick_manifest(doc, blob.path, depth + 1)
        if kind not in (OCI_MANIFEST, DOCKER_MANIFEST, ""):
            raise _bad(f"unsupported manifest media type {kind!r}", blob.path, "unsupported-media-type")
        return blob, doc

    def layer_kind(self, blob: BlobRecord, media: str) -> None:
        if blob.error is not None:
            raise blob.error
        if media in ZSTD_TYPES:
            raise _bad("zstd layers are not supported; use gzip or uncompressed layers", blob.path,
                       "unsupported-media-type")
        want = "tar" if media in TAR_TYPES else "tar+gzip" if media in GZIP_TYPES else None
        if want is None:
            raise _bad(f"unsupported layer media type {media!r}", blob.path, "unsupported-media-type")
        if blob.kind != want:
            raise _bad(f"layer is declared {media} but its content is {blob.kind}", blob.path,
                       "unsupported-media-type")


def _diff_ids(config: dict[str, Any], layers: list[BlobRecord], entry: str | None) -> None:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise _bad(f"config rootfs.diff_ids lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'}"
                   f" layers, the manifest {len(layers)}", entry, "diff-id-mismatch")
    for blob, diff_id in zip(layers, diff_ids, strict=True):
        if diff_id != blob.diff_id:
            raise _bad(f"layer uncompresses to {blob.diff_id}, config says {diff_id!r}", blob.path,
                       "diff-id-mismatch")


def resolve(blobs: dict[str, BlobRecord], aliases: dict[str, str], limits: PackageLimits) -> Layout | None:
    """The image in an OCI layout or `docker save` archive; None for a plain directory tar."""
    r = _Resolver(blobs, aliases, limits)
    if "index.json" in blobs:
        layout = _json(blobs.get(OCI_LAYOUT), "oci-layout file", OCI_LAYOUT)
        if not isinstance(layout, dict) or not str(layout.get("imageLayoutVersion", "")).startswith("1."):
            raise _bad("oci-layout does not name image layout version 1.x", OCI_LAYOUT)
        index = _json(blobs["index.json"], "index.json", "index.json")
        manifest_blob, manifest = r.pick_manifest(index, "index.json")
        config_blob, _ = r.descriptor(manifest.get("config"), "image config")
        layer_descs = manifest.get("layers")
        if not isinstance(layer_descs, list):
            raise _bad("the image manifest has no layers list", manifest_blob.path)
        if len(layer_descs) > limits.max_layers:
            raise _bad(f"the image has {len(layer_descs)} layers (limit {limits.max_layers})",
                       manifest_blob.path)
        layers: list[LayerRef] = []
        layer_blobs: list[BlobRecord] = []
        for desc in layer_descs:
            blob, media = r.descriptor(desc, "layer")
            r.layer_kind(blob, media)
            layers.append(LayerRef(blob.path, media, blob.digest, blob.size))
            layer_blobs.append(blob)
        config = _json(config_blob, "image config", config_blob.path)
        if not isinstance(config, dict):
            raise _bad("the image config is not an object", config_blob.path)
        _diff_ids(config, layer_blobs, config_blob.path)
        return Layout("oci", manifest_blob.digest, manifest_blob.path, config_blob.path, config, layers)
    if "manifest.json" in blobs:
        doc = _json(blobs["manifest.json"], "manifest.json", "manifest.json")
        if not isinstance(doc, list) or len(doc) != 1 or not isinstance(doc[0], dict):
            raise _bad("manifest.json must describe exactly one image", "manifest.json")
        image = doc[0]
        config_path, layer_paths = image.get("Config"), image.get("Layers")
        if not isinstance(config_path, str) or not isinstance(layer_paths, list) or \
                not all(isinstance(p, str) for p in layer_paths):
            raise _bad("manifest.json has no Config or Layers", "manifest.json")
        if len(layer_paths) > limits.max_layers:
            raise _bad(f"the image has {len(layer_paths)} layers", "manifest.json")
        config_blob = r.blob(config_path)
        config = _json(config_blob, "image config", config_path)
        if not isinstance(config, dict):
            raise _bad("the image config is not an object", config_path)
        layers, layer_blobs = [], []
        for path in layer_paths:
            blob = r.blob(path)
            if blob is None:
                raise _bad(f"layer {path} is not in the archive", path, "missing-blob")
            if blob.error is not None:
                raise blob.error
            if blob.kind not in ("tar", "tar+gzip"):
                raise _bad(f"layer {path} is not a tar archive ({blob.kind})", path,
                           "unsupported-media-type")
            media = LAYER_TAR if blob.kind == "tar" else LAYER_GZIP
            layers.append(LayerRef(blob.path, media, blob.digest, blob.size))
            layer_blobs.append(blob)
        _diff_ids(config, layer_blobs, config_path)
        assert config_blob is not None
        return Layout("docker", None, "manifest.json", config_blob.path, config, layers)
    return None

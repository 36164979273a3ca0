"""What a package may contain: the limits it is held to and the rejection it gets otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.errors import AppError

GiB = 1 << 30
MiB = 1 << 20

# Every reason a package is refused, as the stable problem `type` suffix.
REASONS = (
    "absolute-path",        # an entry named /etc/passwd
    "path-traversal",       # an entry (or whiteout) with a `..` component
    "bad-name",             # empty, non-UTF-8, NUL, or too long or deep a name
    "link-escape",          # a symlink that resolves outside the tree or the model root
    "path-through-link",    # an entry written beneath a symlink
    "hardlink-escape",      # a hard link across layers, to outside, or to no earlier file
    "device-file",          # character or block device
    "fifo",
    "special-file",         # sockets, sparse files, unknown entry types
    "setuid",
    "setgid",
    "sticky-bit",
    "duplicate-entry",      # the same path twice in one layer (or in the archive itself)
    "size-limit",           # total unpacked size, or the archive itself, over the limit
    "file-too-large",
    "compression-bomb",     # decompressed/compressed ratio over the limit
    "too-many-files",
    "header-too-large",     # a pax or GNU long-name header bigger than any sane name
    "digest-mismatch",      # blob content vs its name, or a descriptor's digest
    "size-mismatch",        # a descriptor's size vs the blob
    "diff-id-mismatch",     # config rootfs.diff_ids vs the uncompressed layers
    "missing-blob",
    "unsupported-media-type",
    "bad-layout",           # oci-layout / index.json / manifest.json missing or malformed
    "bad-manifest",         # mediagate.toml, cog.yaml or the manifest label is invalid
    "missing-manifest",     # no label, no mediagate.toml, no cog.yaml
    "ambiguous-manifest",   # several candidate model roots
    "entrypoint-missing",   # the module:Class named does not exist in the final tree
    "bad-schema",           # the entrypoint's signature cannot become an inputs schema
    "source-too-large",     # the entrypoint source was too big to keep for reading
    "malformed-archive",    # not a tar, truncated, corrupt gzip
)


class PackageRejected(AppError):
    """A package failed validation; `entry` names the offending archive entry.

    Renders as a 422 problem whose `type` is `package-<reason>` and whose body carries
    `reason`, `entry` and, for entries inside a layer, `layer` (the blob's archive path).
    """

    status_code, type, title = 422, "package-rejected", "Package rejected"

    def __init__(self, message: str, *, entry: str | None = None, reason: str = "rejected",
                 layer: str | None = None, **extra: Any) -> None:
        if reason not in REASONS and reason != "rejected":
            raise ValueError(f"unknown rejection reason {reason!r}")
        extra = {"reason": reason, "entry": entry, **({"layer": layer} if layer else {}), **extra}
        super().__init__(message, type=f"package-{reason}", **extra)
        self.reason = reason
        self.entry = entry
        self.layer = layer

    def __str__(self) -> str:
        where = f" [{self.entry}]" if self.entry is not None else ""
        return f"{self.reason}: {self.message}{where}"


@dataclass(frozen=True)
class PackageLimits:
    """Limits a package is held to while it is read; defaults fit multi-GB model weights."""

    max_archive_bytes: int = 64 * GiB     # the archive as uploaded
    max_total_bytes: int = 64 * GiB       # all files of all layers, unpacked
    max_file_bytes: int = 32 * GiB        # any one file inside a layer
    max_files: int = 100_000              # entries of all layers and of the archive itself
    max_ratio: int = 200                  # decompressed bytes per compressed byte
    # Tar padding makes a few small files compress far beyond 200:1; the ratio binds only
    # once a stream has produced this much.
    ratio_slack_bytes: int = 16 * MiB
    max_json_bytes: int = 4 * MiB         # one index, manifest or config document
    max_json_total_bytes: int = 32 * MiB  # all JSON documents kept while streaming
    max_header_bytes: int = 1 * MiB       # one pax or GNU long-name header
    max_source_bytes: int = 64 * MiB      # Python sources kept to read the entrypoint
    max_path_bytes: int = 4096
    max_depth: int = 128
    max_layers: int = 128

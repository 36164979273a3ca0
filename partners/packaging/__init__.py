"""Model packages: build, read and validate OCI image layout archives.

For the upload endpoint::

    package = validate_stream(fileobj, PackageLimits(), sink=store_sink)   # or validate_archive(path)
    package.manifest          # engine.manifest.Manifest, with inputs/outputs schema derived
    package.blobs             # BlobInfo(digest, size, media_type, role, path) to keep
    package.to_dict()         # store with the version; ValidatedPackage.from_dict() reads it back

For the sandbox::

    ValidatedPackage.from_dict(stored).extract_to(tmpfs_dir, open_blob=decrypting_reader)

Every failure is a `PackageRejected` (422, problem type `package-<reason>`, `entry` names
the offending archive entry).
"""

from partners.packaging.build import BuildResult, build_package
from partners.packaging.cli import package_command
from partners.packaging.reader import open_package, read_file
from partners.packaging.rules import REASONS, PackageLimits, PackageRejected
from partners.packaging.validate import (
    BlobInfo,
    BlobSink,
    BlobWriter,
    FileInfo,
    LayerInfo,
    ValidatedPackage,
    validate_archive,
    validate_stream,
)

__all__ = [
    "REASONS",
    "BlobInfo",
    "BlobSink",
    "BlobWriter",
    "BuildResult",
    "FileInfo",
    "LayerInfo",
    "PackageLimits",
    "PackageRejected",
    "ValidatedPackage",
    "build_package",
    "open_package",
    "package_command",
    "read_file",
    "validate_archive",
    "validate_stream",
]

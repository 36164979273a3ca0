"""The sandbox's first process: unpack the package into the private tmpfs, cap itself, exec the runner.

Runs INSIDE the sandbox as `python -I -S init.py CONFIG.json`, before any partner code, on the
standard library only. The supervisor streams each package layer (a tar, plain or gzip)
through its own pipe; this process extracts them in order into the package root, a tmpfs that
exists only in this sandbox's mount namespace, applying OCI whiteouts (`.wh.NAME` deletes
NAME, `.wh..wh..opq` hides what lower layers put in a directory). Extraction uses tarfile's
`data` filter, so even a layer that slipped past upload validation cannot write outside the
package root, create devices or keep setuid bits. Then it lowers its own resource limits
(inherited by everything it starts, and not raisable again without privileges the sandbox
does not have) and replaces itself with the runner.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tarfile

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


_HAS_FILTERS = hasattr(tarfile, "data_filter")


class UnsafeEntry(ValueError):
    """A layer entry that would land outside the package root or is not a plain file."""


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _checked(member: tarfile.TarInfo, root: str) -> str | None:
    """The entry's path relative to `root`, after refusing anything that could escape it.

    The same rules as tarfile's `data` filter, applied on every Python (the filter only
    exists from 3.11.4): no path or link out of the root, no device or FIFO, no setuid bits.
    """
    name = os.path.normpath(member.name.lstrip("/"))
    if name in (".", ""):
        return None
    if name == ".." or name.startswith("../"):
        raise UnsafeEntry(f"{member.name!r} points outside the package")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeEntry(f"{member.name!r} is a device, FIFO or other special file")
    target = os.path.join(root, name)
    if not _inside(root, os.path.dirname(target)):
        raise UnsafeEntry(f"{member.name!r} would be written through a link out of the package")
    if member.issym():
        dest = member.linkname
        if os.path.isabs(dest) or not _inside(root, os.path.join(os.path.dirname(target), dest)):
            raise UnsafeEntry(f"{member.name!r} links outside the package ({dest!r})")
    if member.islnk() and not _inside(root, os.path.join(root, member.linkname.lstrip("/"))):
        raise UnsafeEntry(f"{member.name!r} hard-links outside the package")
    member.mode &= 0o755
    member.name = name
    return name


def _apply_layer(fd: int, root: str) -> int:
    """Extract one layer stream into `root`; returns the number of entries applied."""
    added: set[str] = set()
    count = 0
    with os.fdopen(fd, "rb", buffering=1 << 20) as stream:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                name = _checked(member, root)
                if name is None:
                    continue
                parent, base = os.path.split(name)
                if base == _OPAQUE:
                    directory = os.path.join(root, parent)
                    if os.path.isdir(directory):
                        for entry in os.listdir(directory):
                            if os.path.join(parent, entry) not in added:
                                _remove(os.path.join(directory, entry))
                    continue
                if base.startswith(_WHITEOUT):
                    _remove(os.path.join(root, parent, base[len(_WHITEOUT):]))
                    continue
                target = os.path.join(root, name)
                if not member.isdir() and os.path.lexists(target):
                    _remove(target)
                if _HAS_FILTERS:
                    tar.extract(member, root, filter="data")
                else:
                    tar.extract(member, root, set_attrs=not member.issym())
                added.add(name)
                count += 1
        # Read to the end so the supervisor's writer never blocks on trailing padding.
        while stream.read(1 << 20):
            pass
    return count


def _limit(name: str, value: int | None) -> None:
    if value is None:
        return
    kind = getattr(resource, f"RLIMIT_{name}")
    resource.setrlimit(kind, (value, value))


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    os.umask(0o022)
    root = config["package_root"]
    entries = 0
    for fd in config["layer_fds"]:
        entries += _apply_layer(int(fd), root)
    print(f"mediagate: package unpacked ({len(config['layer_fds'])} layers, {entries} entries)",
          file=sys.stderr, flush=True)
    for name, value in config["rlimits"].items():
        _limit(name, value)
    os.chdir(config["chdir"])
    argv = config["exec"]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor's log, then exit
        print(f"mediagate: sandbox start failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(70)

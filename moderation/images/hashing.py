"""Perceptual hashing (PDQ) and a multi-index hash table that stays fast for millions of hashes.

Matching: a 256-bit PDQ hash matches a list entry when their Hamming distance is at most
`max_distance` (31 by default, the industry's usual value). The index splits each hash
into 16 chunks of 16 bits; by the pigeonhole principle two hashes within distance d agree
to within d // 16 bits on at least one chunk, so only entries whose chunk lies within that
radius of the query's chunk are candidates. With 16 one-bit-radius probes per chunk that is
272 bucket reads, a few thousand candidates at a million entries, and one vectorised
popcount over them.

Hash lists come from files (industry lists are exchanged as hex PDQ, one per line):
`<data_dir>/hashlists/<category>/*.{txt,pdq,csv,npy}` and `MEDIAGATE_MODERATION_HASH_LISTS`
(`category=path,…`). A list that cannot be read makes every image check fail closed.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

HASH_BYTES = 32
CHUNKS = 16
_HEX = re.compile(r"\b[0-9a-fA-F]{64}\b")


class HashListError(Exception):
    """A configured hash list is missing or malformed."""


def pdq_hashes(rgb: np.ndarray, *, dihedral: bool = True) -> tuple[np.ndarray, int]:
    """PDQ hashes of an RGB image as (k, 32) uint8 rows, and the PDQ quality (0-100).

    With `dihedral`, the eight rotations and mirror images are returned too (same cost),
    so a flipped or rotated copy still matches.
    """
    import pdqhash

    if dihedral:
        bits, quality = pdqhash.compute_dihedral(rgb)
        rows = np.asarray(bits, dtype=np.uint8).reshape(-1, 256)
    else:
        bits, quality = pdqhash.compute(rgb)
        rows = np.asarray(bits, dtype=np.uint8).reshape(1, 256)
    return np.packbits(rows, axis=1), int(quality)


def to_hex(row: np.ndarray) -> str:
    """A hash row as 64 hex characters."""
    return bytes(row.astype(np.uint8)).hex()


def from_hex(text: str) -> np.ndarray:
    """64 hex characters as a hash row."""
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).copy()


def _probe_masks(radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in combinations(range(16), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)


class HashIndex:
    """A multi-index over (N, 32) uint8 PDQ hashes."""

    def __init__(self, hashes: np.ndarray) -> None:
        hashes = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
        self.hashes = hashes
        self.size = n = len(hashes)
        # Popcount of XOR does not care about byte order, so a view of the bytes will do.
        self._words = hashes.view(np.uint64)  # (N, 4)
        chunks = hashes.view(">u2").astype(np.uint16)  # (N, 16)
        self._order = np.empty(CHUNKS * n, dtype=np.int32)
        self._offsets = np.empty((CHUNKS, 65537), dtype=np.int64)
        for j in range(CHUNKS):
            values = chunks[:, j]
            self._order[j * n:(j + 1) * n] = np.argsort(values, kind="stable")
            counts = np.bincount(values, minlength=65536)  # radix sort above: uint16 keys
            self._offsets[j, 0] = j * n
            np.cumsum(counts, out=self._offsets[j, 1:])
            self._offsets[j, 1:] += j * n
        self._masks: dict[int, np.ndarray] = {}

    def _masks_for(self, radius: int) -> np.ndarray:
        if radius not in self._masks:
            self._masks[radius] = _probe_masks(radius)
        return self._masks[radius]

    def query(self, query: np.ndarray, max_distance: int = 31) -> tuple[np.ndarray, np.ndarray]:
        """Entries within `max_distance` of any query row: (indices, distances), closest first."""
        queries = np.ascontiguousarray(np.asarray(query, dtype=np.uint8).reshape(-1, HASH_BYTES))
        if self.size == 0 or len(queries) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        radius = max_distance // CHUNKS
        if radius > 2:  # probing gets dearer than scanning
            return self._scan(queries, max_distance)
        masks = self._masks_for(radius)
        nq = len(queries)
        qchunks = queries.view(">u2").astype(np.int64)  # (Q, 16)
        probes = (qchunks[:, :, None] ^ masks[None, None, :]).reshape(nq, -1)  # (Q, 16*P)
        rows = np.repeat(np.arange(CHUNKS), len(masks))[None, :]
        starts = self._offsets[rows, probes].ravel()
        lengths = self._offsets[rows, probes + 1].ravel() - starts
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        # Concatenate every bucket's range without a Python loop; remember each one's query.
        shifts = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        candidates = self._order[np.arange(total) + shifts]
        per_query = lengths.reshape(nq, -1).sum(axis=1)
        qwords = queries.view(np.uint64)  # (Q, 4)
        xor = self._words[candidates] ^ np.repeat(qwords, per_query, axis=0)
        distances = np.bitwise_count(xor).sum(axis=1, dtype=np.int64)
        keep = distances <= max_distance
        found, dist = candidates[keep].astype(np.int64), distances[keep]
        if len(found) > 1:
            # The closest distance per entry (an entry may be reached through several probes).
            order = np.lexsort((dist, found))
            found, dist = found[order], dist[order]
            first = np.concatenate(([True], found[1:] != found[:-1]))
            found, dist = found[first], dist[first]
        order = np.argsort(dist, kind="stable")
        return found[order], dist[order]

    def _scan(self, queries: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        qwords = queries.view(np.uint64)
        best = np.full(self.size, 257, dtype=np.int64)
        for q in qwords:
            best = np.minimum(best, np.bitwise_count(self._words ^ q).sum(axis=1, dtype=np.int64))
        found = np.nonzero(best <= max_distance)[0]
        order = np.argsort(best[found], kind="stable")
        return found[order], best[found][order]


def read_hash_file(path: Path) -> np.ndarray:
    """Read a hash list file: `.npy` of (N, 32) uint8, or text with one hex PDQ per line."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != HASH_BYTES:
                raise HashListError(f"{path}: expected an (N, 32) uint8 array, got {array.dtype} {array.shape}")
            return array
        rows = []
        with path.open("r", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                match = _HEX.search(line)
                if match is None:
                    if lineno == 1 and ("," in line or "\t" in line):
                        continue  # a CSV header
                    raise HashListError(f"{path}:{lineno}: no 64-hex PDQ hash on the line")
                rows.append(match.group(0))
        if not rows:
            return np.empty((0, HASH_BYTES), np.uint8)
        return np.frombuffer(bytes.fromhex("".join(rows)), dtype=np.uint8).reshape(-1, HASH_BYTES)
    except HashListError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HashListError(f"{path}: cannot read hash list: {exc}") from exc


@dataclass(frozen=True)
class HashList:
    """One loaded list: its category, where it came from and how many entries it holds."""

    name: str
    category: str
    path: str
    count: int


@dataclass(frozen=True)
class HashMatch:
    """A list entry near an image's hash."""

    list_name: str
    category: str
    entry: int
    distance: int
    entry_hash: str


class HashRegistry:
    """Every configured list in one index, with each entry's list."""

    def __init__(self, lists: list[tuple[str, str, np.ndarray]]) -> None:
        self.lists: list[HashList] = []
        arrays, owners = [], []
        for i, (name, category, array) in enumerate(lists):
            self.lists.append(HashList(name=name, category=category, path=name, count=len(array)))
            arrays.append(array)
            owners.append(np.full(len(array), i, dtype=np.int32))
        hashes = np.concatenate(arrays) if arrays else np.empty((0, HASH_BYTES), np.uint8)
        self._owner = np.concatenate(owners) if owners else np.empty(0, np.int32)
        self._first = np.cumsum([0] + [len(a) for a in arrays])
        self.index = HashIndex(hashes)

    @property
    def size(self) -> int:
        return self.index.size

    def match(self, hashes: np.ndarray, max_distance: int) -> list[HashMatch]:
        """Every list entry within `max_distance` of any of `hashes`."""
        found, dist = self.index.query(hashes, max_distance)
        out = []
        for idx, d in zip(found.tolist(), dist.tolist(), strict=True):
            owner = int(self._owner[idx])
            info = self.lists[owner]
            out.append(HashMatch(list_name=info.name, category=info.category,
                                 entry=idx - int(self._first[owner]), distance=int(d),
                                 entry_hash=to_hex(self.index.hashes[idx])))
        return out


_LIST_SUFFIXES = (".txt", ".pdq", ".csv", ".npy")
_registry_lock = threading.Lock()
_registry: tuple[tuple, HashRegistry] | None = None


def configured_lists(list_dir: Path, extra: str) -> list[tuple[str, Path]]:
    """(category, path) of every configured list file."""
    found: list[tuple[str, Path]] = []
    if list_dir.is_dir():
        for category_dir in sorted(p for p in list_dir.iterdir() if p.is_dir()):
            for path in sorted(category_dir.iterdir()):
                if path.is_file() and path.suffix in _LIST_SUFFIXES:
                    found.append((category_dir.name, path))
    for entry in filter(None, (e.strip() for e in extra.split(","))):
        category, sep, path = entry.partition("=")
        if not sep or not category.strip() or not path.strip():
            raise HashListError(f"hash list setting {entry!r} is not category=path")
        found.append((category.strip(), Path(path.strip())))
    return found


def get_registry(list_dir: Path, extra: str = "") -> HashRegistry:
    """The index of every configured list; rebuilt when a list file changes."""
    global _registry
    entries = configured_lists(list_dir, extra)
    try:
        signature = tuple((c, str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for c, p in entries)
    except OSError as exc:
        raise HashListError(f"hash list unavailable: {exc}") from exc
    with _registry_lock:
        if _registry is not None and _registry[0] == signature:
            return _registry[1]
        lists = [(f"{c}/{p.name}", c, read_hash_file(p)) for c, p in entries]
        registry = HashRegistry(lists)
        _registry = (signature, registry)
        return registry

"""The final file tree of a package: layers applied in order, with OCI whiteouts.

Only metadata lives here (no file contents), so even 100k-entry images stay small. Links
are checked on the final tree, because a symlink can be made to escape only by a link that
a later layer adds beneath or beside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from partners.packaging.rules import PackageRejected
from partners.packaging.tarsafe import Entry

_MAX_HOPS = 40


@dataclass(slots=True)
class Node:
    """One path of the final tree."""

    kind: str                 # file, dir, symlink, hardlink
    mode: int
    size: int
    digest: str | None
    target: str | None        # symlink: as written; hardlink: the linked file, same layer
    layer: int                # index into the package's layers; -1 for implied directories
    name: str                 # the entry name as written, for messages


class _Escape(Exception):
    pass


def within(root: str, path: str) -> bool:
    """Whether `path` is `root` or below it (paths relative to the tree root)."""
    return root == "" or path == root or path.startswith(root + "/")


class Tree:
    """Paths to nodes, plus each directory's children so whole subtrees can be dropped."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": Node("dir", 0o755, 0, None, None, -1, "")}
        self.children: dict[str, set[str]] = {"": set()}

    def _remove(self, path: str) -> None:
        stack = [path]
        while stack:
            p = stack.pop()
            node = self.nodes.pop(p, None)
            if node is None:
                continue
            stack.extend(self.children.pop(p, ()))
        parent = path.rpartition("/")[0]
        self.children.get(parent, set()).discard(path)

    def _add(self, path: str, node: Node) -> None:
        self.nodes[path] = node
        if node.kind == "dir":
            self.children.setdefault(path, set())
        self.children[path.rpartition("/")[0]].add(path)

    def _parents(self, entry: Entry, layer: int, layer_name: str | None, *, create: bool) -> bool:
        """Walk the entry's parent directories; False if one is missing and not created."""
        parts = entry.path.split("/")[:-1] if entry.kind != "opaque" else entry.path.split("/")
        current = ""
        for part in parts:
            current = f"{current}/{part}" if current else part
            node = self.nodes.get(current)
            if node is not None and node.kind == "symlink":
                raise PackageRejected(
                    f"entry is written through the symlink {current!r}", entry=entry.name,
                    layer=layer_name, reason="path-through-link")
            if node is not None and node.kind == "dir":
                continue
            if not create:
                return False
            if node is not None:
                self._remove(current)  # a file replaced by a directory, as overlay unpacking does
            self._add(current, Node("dir", 0o755, 0, None, None, layer, current))
        return True

    def apply(self, layer: int, entries: Iterable[Entry], layer_name: str | None) -> None:
        """Apply one layer: its whiteouts hide lower layers, then its entries are added."""
        entries = list(entries)
        for e in entries:
            if e.kind == "whiteout":
                if self._parents(e, layer, layer_name, create=False) and e.path in self.nodes:
                    self._remove(e.path)
            elif e.kind == "opaque":
                if e.path and not self._parents(e, layer, layer_name, create=False):
                    continue
                node = self.nodes.get(e.path)
                if node is not None and node.kind == "dir":
                    for child in list(self.children.get(e.path, ())):
                        self._remove(child)
        for e in entries:
            if e.kind not in ("file", "dir", "symlink", "hardlink") or e.path == "":
                continue
            self._parents(e, layer, layer_name, create=True)
            existing = self.nodes.get(e.path)
            if existing is not None and existing.kind == "dir" and e.kind == "dir":
                existing.mode, existing.layer, existing.name = e.mode, layer, e.name
                continue
            if existing is not None:
                self._remove(e.path)
            self._add(e.path, Node(e.kind, e.mode, e.size, e.digest, e.target, layer, e.name))

    def _walk(self, start: list[str], target: str, hops: list[int]) -> list[str]:
        parts = [] if target.startswith("/") else list(start)
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise _Escape
                parts.pop()
                continue
            parts.append(comp)
            node = self.nodes.get("/".join(parts))
            if node is not None and node.kind == "symlink":
                hops[0] += 1
                if hops[0] > _MAX_HOPS:
                    raise _Escape
                assert node.target is not None
                parts = self._walk(parts[:-1], node.target, hops)
        return parts

    def resolve(self, path: str) -> str | None:
        """`path` with every symlink followed, or None if that leaves the tree or loops."""
        try:
            return "/".join(self._walk([], path, [0]))
        except _Escape:
            return None

    def check_links(self, root: str) -> None:
        """Every symlink stays inside the tree, and inside the model root if it is in it."""
        for path in sorted(self.nodes):
            node = self.nodes[path]
            if node.kind != "symlink":
                continue
            assert node.target is not None
            in_root = within(root, path)
            if in_root and node.target.startswith("/"):
                raise PackageRejected(
                    f"symlink to the absolute path {node.target!r} would leave the model",
                    entry=node.name, reason="link-escape")
            try:
                resolved = "/".join(self._walk(path.split("/")[:-1], node.target, [0]))
            except _Escape:
                raise PackageRejected(
                    f"symlink to {node.target!r} points outside the package (or loops)",
                    entry=node.name, reason="link-escape") from None
            if in_root and not within(root, resolved):
                raise PackageRejected(
                    f"symlink to {node.target!r} points outside the model directory",
                    entry=node.name, reason="link-escape")

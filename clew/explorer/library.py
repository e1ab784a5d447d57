"""The graphs of one folder: which files are graphs, a name confined to the folder, a cache of loaded ones.

A graph is named by its path relative to the folder, with ``/`` between parts. :meth:`Library.path`
is the one gate from a name the page sends to a file: it refuses absolute names, ``..`` parts,
backslashes and control characters, and anything whose real path (symbolic links followed) lies
outside the folder. Percent-encoded names are decoded once by the server before they get here, so
``%2e%2e`` arrives as ``..`` and is refused; a doubly encoded one names no file.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from clew.attribution import Graph, import_json
from clew.errors import ClewError

SKIP_JSON = {"graph-metadata.json"}
"""JSON files beside graphs that are not graphs."""
SKIP_DIRS = {"features", "__pycache__", ".git"}
"""Folders whose files are never graphs (the viewers' feature files)."""
MAX_DEPTH = 3
"""How deep under the folder graphs are looked for."""


@dataclass
class Entry:
    """A graph file of the folder, as the page lists it."""

    name: str
    """Its path relative to the folder, ``/``-separated."""
    kind: str
    """``safetensors`` (clew's graph file, writable) or ``json`` (a viewer's graph, read-only)."""
    size: int
    """Bytes on disk."""

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": self.size}


class Library:
    """The graph files under ``root``, loaded on demand and kept while their file is unchanged."""

    def __init__(self, root: str | Path, keep: int = 4):
        root = Path(root)
        if not root.is_dir():
            raise ClewError(f"{root}: no such folder")
        self.root = root.resolve()
        self.keep = keep
        self._cache: OrderedDict[str, tuple[tuple, Graph]] = OrderedDict()
        self._lock = threading.Lock()

    # --- names and paths --------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The file a graph name denotes, or a one-line error when it is not a graph inside the folder."""
        if not isinstance(name, str) or not name:
            raise ClewError("no graph named: give the graph's name")
        if any(ord(c) < 32 for c in name) or "\\" in name or name.startswith("/") or ":" in name:
            raise ClewError(f"graph {name!r}: not a name inside the folder")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ClewError(f"graph {name!r}: not a name inside the folder")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise ClewError(f"graph {name!r}: leads outside the folder")
        if path.suffix not in (".safetensors", ".json") or path.name in SKIP_JSON:
            raise ClewError(f"graph {name!r}: not a graph file (.safetensors or viewer .json)")
        if not path.is_file():
            raise ClewError(f"graph {name!r}: no such graph in the folder")
        return path

    def entries(self) -> list[Entry]:
        """Every graph file under the folder (links leading outside it left out), sorted by name."""
        found = []

        def walk(folder: Path, depth: int) -> None:
            for item in sorted(folder.iterdir()):
                if item.name.startswith("."):
                    continue
                if item.is_dir():
                    if depth < MAX_DEPTH and item.name not in SKIP_DIRS:
                        walk(item, depth + 1)
                    continue
                if item.suffix not in (".safetensors", ".json") or item.name in SKIP_JSON:
                    continue
                real = item.resolve()
                if not real.is_relative_to(self.root) or not real.is_file():
                    continue
                if item.suffix == ".json" and not _looks_like_graph(real):
                    continue
                name = item.relative_to(self.root).as_posix()
                found.append(Entry(name, item.suffix[1:], real.stat().st_size))

        walk(self.root, 0)
        return found

    # --- loading ----------------------------------------------------------------------------------------

    def load(self, name: str) -> Graph:
        """The graph ``name``, read once and kept while its file stays the same."""
        path = self.path(name)
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(name)
                return hit[1]
        graph = Graph.load(path) if path.suffix == ".safetensors" else import_json(path)
        with self._lock:
            self._cache[name] = (stamp, graph)
            self._cache.move_to_end(name)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return graph

    def writable(self, name: str) -> bool:
        return self.path(name).suffix == ".safetensors"

    def save(self, name: str, graph: Graph) -> None:
        """Write ``graph`` back to its file (a fresh file renamed into place) and keep it cached."""
        path = self.path(name)
        if path.suffix != ".safetensors":
            raise ClewError(
                f"graph {name!r}: a viewer JSON graph is read-only here; trace it with clew to keep annotations"
            )
        graph.save(path)
        stat = path.stat()
        with self._lock:
            self._cache[name] = ((stat.st_mtime_ns, stat.st_size), graph)


def _looks_like_graph(path: Path) -> bool:
    """Whether a JSON file's first bytes look like a viewer graph (an object with ``metadata``/``nodes``)."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16).decode("utf-8", errors="ignore")
    except OSError:
        return False
    if not head.lstrip().startswith("{"):
        return False
    if '"nodes"' in head or '"metadata"' in head:
        return True
    try:  # a small file whose keys come late
        return path.stat().st_size < (1 << 16) and {"nodes", "links"} <= set(json.loads(head))
    except (ValueError, TypeError):
        return False

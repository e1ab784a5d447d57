"""The graph store: one folder of graph files and an SQLite index, grown by many workers, resumable.

Layout::

    STORE/store.json            which model and dictionary (with fingerprints) and which trace settings
    STORE/index.sqlite          one row per prompt: its fields, status, scores, sizes, timing, worker
    STORE/graphs/ab/<key>.safetensors   the graph, exactly the file ``clew trace`` writes

One process, the driver, writes the index and the files; workers only trace and hand back bytes. A
result is recorded in three steps: the row with its numbers and status ``writing``, the file (a
temporary file beside it, flushed, renamed into place), then status ``done``. A crash at any point
leaves a row that :meth:`GraphStore.recover` settles on the next run: a ``writing`` row whose file is
whole becomes ``done``, else ``pending``; stray temporary files are removed. So no graph is written
twice and none is ever half there under its name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clew.batch.prompts import PromptSpec
from clew.errors import ClewError
from clew.files import load_json, write_atomic

FORMAT = "clew-store/1"
INDEX = "index.sqlite"
MANIFEST = "store.json"

COLUMNS = {
    "id": "TEXT PRIMARY KEY",
    "seq": "INTEGER",  # order of first appearance
    "prompt": "TEXT NOT NULL",
    "targets": "TEXT",  # JSON list
    "contrast": "TEXT",  # JSON pair or null
    "fields": "TEXT",  # JSON object of the other prompt fields
    "status": "TEXT NOT NULL",  # pending | writing | done | failed
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "worker": "TEXT",
    "error": "TEXT",
    "path": "TEXT",  # relative to the store
    "n_tokens": "INTEGER",
    "n_active": "INTEGER",
    "n_features": "INTEGER",
    "n_edges": "INTEGER",
    "n_pruned_features": "INTEGER",
    "n_pruned_edges": "INTEGER",
    "logit_labels": "TEXT",  # JSON list
    "top_token": "TEXT",
    "top_prob": "REAL",
    "replacement": "REAL",
    "completeness": "REAL",
    "pruned_replacement": "REAL",
    "pruned_completeness": "REAL",
    "seconds": "REAL",  # tracing alone
    "worker_seconds": "REAL",  # tracing, pruning, scoring and serialising
    "peak_rss_mb": "REAL",  # the worker's peak resident memory so far
    "threads": "INTEGER",
    "finished": "REAL",  # unix time
}
RESULT_FIELDS = [c for c in COLUMNS if c not in ("id", "seq", "prompt", "targets", "contrast", "fields")]


def key_of(ident: str) -> str:
    """A file name for an id: any id (slashes, spaces, any script) maps to 20 hex digits."""
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err)


class GraphStore:
    """A store folder, opened (and created when absent) by its driver."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if not (self.root / INDEX).exists():
            if not create:
                raise ClewError(f"{self.root}: not a graph store (no {INDEX})")
            if self.root.exists() and not self.root.is_dir():
                raise ClewError(f"{self.root}: exists and is not a folder")
            self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / INDEX, timeout=60)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS graphs ({cols})")
        self.db.execute("CREATE INDEX IF NOT EXISTS by_status ON graphs (status)")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    # --- what the store holds ---------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        path = self.root / MANIFEST
        return load_json(path) if path.exists() else None

    def claim(self, identity: dict[str, str], settings: dict[str, Any]) -> None:
        """Record which model, dictionary and settings write this store; refuse a store written by others."""
        found = self.manifest()
        if found is None:
            meta = {"format": FORMAT, **identity, "settings": settings, "created": time.time()}
            write_atomic(self.root / MANIFEST, json.dumps(meta, indent=1) + "\n")
            return
        if found.get("format") != FORMAT:
            raise ClewError(f"{self.root}: field 'format' is {found.get('format')!r}, expected {FORMAT!r}")
        for what in ("model", "dictionary"):
            if found.get(f"{what}_fingerprint") != identity[f"{what}_fingerprint"]:
                raise ClewError(
                    f"{self.root} was written with {what} {found.get(what)!r} and this run loads "
                    f"{identity[what]!r}, whose weights differ: give another --out"
                )
        self.check_settings(settings)

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to add graphs made with other settings (a store holds graphs that compare)."""
        found = self.manifest()
        if found is None:
            return
        differ = sorted(k for k in settings if found.get("settings", {}).get(k) != settings[k])
        if differ:
            was = ", ".join(f"{k}={found['settings'].get(k)!r}" for k in differ)
            raise ClewError(
                f"{self.root} was written with {was}: rerun with those settings or give another --out"
            )

    def add(self, specs: list[PromptSpec]) -> int:
        """Enter prompts not yet in the index as pending; returns how many are new. An id already there
        with another prompt is refused."""
        known = {r["id"]: r["prompt"] for r in self.db.execute("SELECT id, prompt FROM graphs")}
        clash = next((s for s in specs if s.id in known and known[s.id] != s.prompt), None)
        if clash is not None:
            raise ClewError(
                f"{self.root}: id {clash.id!r} is already in the store with the prompt {known[clash.id]!r}"
            )
        (start,) = self.db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM graphs").fetchone()
        new = [s for s in specs if s.id not in known]
        self.db.executemany(
            "INSERT INTO graphs (id, seq, prompt, targets, contrast, fields, status) VALUES (?,?,?,?,?,?,'pending')",
            [
                (
                    s.id,
                    start + i,
                    s.prompt,
                    json.dumps(list(s.targets)),
                    json.dumps(s.contrast),
                    json.dumps(s.fields),
                )
                for i, s in enumerate(new)
            ],
        )
        self.db.commit()
        return len(new)

    def recover(self) -> int:
        """Settle what a crash left: ``writing`` rows become ``done`` when their file is whole, else
        ``pending``; temporary files are removed. Returns how many rows were settled."""
        from clew.attribution import Graph

        settled = 0
        for row in self.db.execute("SELECT id, path FROM graphs WHERE status = 'writing'").fetchall():
            path = self.root / row["path"]
            try:
                Graph.load(path)
                status = "done"
            except ClewError:
                path.unlink(missing_ok=True)
                status = "pending"
            self.db.execute("UPDATE graphs SET status = ? WHERE id = ?", (status, row["id"]))
            settled += 1
        self.db.commit()
        graphs = self.root / "graphs"
        if graphs.is_dir():
            for tmp in graphs.glob("*/.*.tmp"):
                tmp.unlink(missing_ok=True)
        return settled

    def todo(self, retry_failed: bool = False) -> list[PromptSpec]:
        statuses = ("pending", "failed") if retry_failed else ("pending",)
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(f"SELECT * FROM graphs WHERE status IN ({marks}) ORDER BY seq", statuses)
        return [spec_of(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM graphs GROUP BY status").fetchall())

    def rows(self, status: str | None = "done") -> Iterator[dict[str, Any]]:
        sql = "SELECT * FROM graphs" + (" WHERE status = ?" if status else "") + " ORDER BY seq"
        for r in self.db.execute(sql, (status,) if status else ()):
            yield decoded(r)

    def row(self, ident: str) -> dict[str, Any]:
        r = self.db.execute("SELECT * FROM graphs WHERE id = ?", (ident,)).fetchone()
        if r is None:
            raise ClewError(f"{self.root}: no prompt with id {ident!r}")
        return decoded(r)

    def graph_path(self, row: dict[str, Any]) -> Path:
        return self.root / row["path"]

    # --- recording results ------------------------------------------------------------------------------

    def record(self, ident: str, result: dict[str, Any], data: bytes) -> None:
        """The row (``writing``), the file (whole or not at all), then ``done``. A row already done is left
        alone and nothing is written (a result that arrives twice is written once)."""
        (status,) = self.db.execute("SELECT status FROM graphs WHERE id = ?", (ident,)).fetchone()
        if status == "done":
            return
        key = key_of(ident)
        rel = f"graphs/{key[:2]}/{key}.safetensors"
        values = {
            **{k: result.get(k) for k in RESULT_FIELDS},
            "status": "writing",
            "path": rel,
            "error": None,
        }
        values["logit_labels"] = json.dumps(values["logit_labels"])
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(
            f"UPDATE graphs SET {sets}, attempts = attempts + 1 WHERE id = ?", (*values.values(), ident)
        )
        self.db.commit()
        write_bytes_atomic(self.root / rel, data)
        self.db.execute("UPDATE graphs SET status = 'done' WHERE id = ?", (ident,))
        self.db.commit()

    def fail(self, ident: str, error: str, worker: str | None = None) -> None:
        """A prompt that cannot be traced (a bad target, too long): not retried unless asked."""
        self.db.execute(
            "UPDATE graphs SET status = 'failed', error = ?, worker = ?, attempts = attempts + 1 WHERE id = ?",
            (error, worker, ident),
        )
        self.db.commit()

    def lost(self, ident: str, error: str) -> int:
        """A prompt whose worker died: pending again. Returns its attempts so far."""
        self.db.execute(
            "UPDATE graphs SET status = 'pending', error = ?, attempts = attempts + 1 WHERE id = ?",
            (error, ident),
        )
        self.db.commit()
        return int(self.db.execute("SELECT attempts FROM graphs WHERE id = ?", (ident,)).fetchone()[0])


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path``, flushed to disk, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a store is often shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def decoded(r: sqlite3.Row) -> dict[str, Any]:
    row = dict(r)
    for k in ("targets", "contrast", "fields", "logit_labels"):
        if row.get(k) is not None:
            row[k] = json.loads(row[k])
    return row


def spec_of(r: sqlite3.Row | dict[str, Any]) -> PromptSpec:
    row = decoded(r) if isinstance(r, sqlite3.Row) else r
    contrast = tuple(row["contrast"]) if row["contrast"] else None
    return PromptSpec(row["id"], row["prompt"], tuple(row["targets"] or ()), contrast, row["fields"] or {})


def open_stores(paths: list[str | Path]) -> list[GraphStore]:
    """Existing stores for reading (aggregate, diff); they must share one dictionary."""
    stores = [GraphStore(p, create=False) for p in paths]
    prints = {(s.manifest() or {}).get("dictionary_fingerprint") for s in stores}
    if len(prints) > 1:
        raise ClewError(
            "these stores were written with different dictionaries: their features are not the same"
        )
    return stores

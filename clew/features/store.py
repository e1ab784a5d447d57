"""The feature store: one SQLite file per dictionary with what each feature means.

Tables (schema version :data:`SCHEMA_VERSION`, documented in ``docs/formats.md``):

- ``meta(key, value)``: JSON values: ``schema_version``, the model and dictionary it was built from
  (with the dictionary's fingerprint), ``layers``, ``n_features``, the corpus, token counts, the
  collection settings, the histogram's bin edges.
- ``features(layer, feature, ...)``: one row per feature: activation count, frequency, mean, min and
  max, histogram, top and bottom logit effects, and its examples (a compact blob, :func:`pack_examples`).
- ``labels(layer, feature, source, label)``: the automatic label (source ``auto``) and any others.
- ``feature_tokens(token, layer, feature, count)``: the tokens a feature peaks on in its examples,
  indexed by token (the explorer's "features that fire on ' Dallas'").
- ``vocab(token, text)``: the text of every token that appears in the store.
- ``state(key, value)``: a collection in progress (removed when it finishes).

Everything is written by one process; readers may come and go (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clew.errors import ClewError

SCHEMA_VERSION = 1
"""Bumped whenever a table or a blob layout changes; a store from a newer version is refused."""

KINDS = ("top", "random")
"""Example kinds: the highest-activating contexts, and a uniform sample of the non-zero activations."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL,
    n_active INTEGER NOT NULL, frequency REAL NOT NULL, mean REAL NOT NULL,
    act_min REAL NOT NULL, act_max REAL NOT NULL,
    histogram BLOB NOT NULL, top_logits TEXT NOT NULL, bottom_logits TEXT NOT NULL,
    examples BLOB NOT NULL,
    PRIMARY KEY (layer, feature));
CREATE TABLE IF NOT EXISTS labels (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL, source TEXT NOT NULL, label TEXT NOT NULL,
    PRIMARY KEY (layer, feature, source)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_by_text ON labels (label COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS feature_tokens (
    token INTEGER NOT NULL, layer INTEGER NOT NULL, feature INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (token, layer, feature)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vocab (token INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


@dataclass
class Example:
    """One context where a feature fired: a window of tokens around one position."""

    kind: str
    """``"top"`` (among the highest activations, one per context) or ``"random"`` (a uniform sample
    of the feature's non-zero activations)."""
    context: int
    """The context's number in the collection (contexts are numbered in corpus order)."""
    position: int
    """The position of the chosen token in its context (BOS = 0)."""
    activation: float
    """The feature's activation at that token (float32, exactly as the dictionary computed it)."""
    peak: int
    """The index of that token in :attr:`tokens`."""
    tokens: list[int]
    """The window's token ids (the document's start, or ``before`` tokens before the peak, to ``after``
    tokens after it, within the document)."""
    acts: list[float]
    """The feature's activation at every token of the window."""


@dataclass
class FeatureRecord:
    """Everything the store knows about one feature."""

    layer: int
    feature: int
    n_active: int
    """Tokens (BOS excluded) where the feature was non-zero."""
    frequency: float
    """``n_active`` over the tokens seen."""
    mean: float
    """Mean activation over the tokens where it was non-zero."""
    act_min: float
    """Smallest non-zero activation."""
    act_max: float
    """Largest activation."""
    histogram: list[int]
    """Counts of non-zero activations in the store's log-spaced bins (``meta['hist_edges']``)."""
    top_logits: list[tuple[int, float]]
    """(token, logit effect) the feature raises most, strongest first."""
    bottom_logits: list[tuple[int, float]]
    """(token, logit effect) the feature lowers most, strongest first."""
    examples: list[Example] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.feature}"

    def of_kind(self, kind: str) -> list[Example]:
        return [e for e in self.examples if e.kind == kind]


# ----- the examples blob -------------------------------------------------------------------------------

_HEAD = struct.Struct("<III")  # n examples, window width, token bytes (2 or 4)


LOGIT_DECIMALS = 4
"""Decimals a feature's logit effects keep in the store."""


def rounded_logits(pairs: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """``(token, effect)`` pairs as the store keeps them: what a label computed at collection time must
    see, so that it equals one computed later from the store."""
    return [(int(t), round(float(v), LOGIT_DECIMALS)) for t, v in pairs]


def pack_examples(examples: list[Example], width: int) -> bytes:
    """zlib of: a header ``<III`` (n, width, token bytes), then little-endian arrays ``kind`` uint8[n],
    ``context`` int64[n], ``position`` int32[n], ``peak`` int32[n], ``activation`` float32[n],
    ``tokens`` int16 or int32[n, width] (-1 past the window's end), ``acts`` float16[n, width] (the
    window's activations, rounded; ``activation`` holds the peak's exact float32)."""
    n = len(examples)
    toks = np.full((n, width), -1, dtype=np.int64)
    acts = np.zeros((n, width), dtype=np.float32)
    for i, e in enumerate(examples):
        toks[i, : len(e.tokens)] = e.tokens
        acts[i, : len(e.acts)] = e.acts
    tbytes = 2 if toks.size == 0 or toks.max() < 2**15 else 4
    parts = [
        _HEAD.pack(n, width, tbytes),
        np.array([KINDS.index(e.kind) for e in examples], dtype="<u1").tobytes(),
        np.array([e.context for e in examples], dtype="<i8").tobytes(),
        np.array([e.position for e in examples], dtype="<i4").tobytes(),
        np.array([e.peak for e in examples], dtype="<i4").tobytes(),
        np.array([e.activation for e in examples], dtype="<f4").tobytes(),
        toks.astype("<i2" if tbytes == 2 else "<i4").tobytes(),
        acts.astype("<f2").tobytes(),
    ]
    return zlib.compress(b"".join(parts), 6)


def unpack_examples(blob: bytes) -> list[Example]:
    """The inverse of :func:`pack_examples`."""
    raw = zlib.decompress(blob)
    n, width, tbytes = _HEAD.unpack_from(raw)
    at = _HEAD.size

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=at)
        at += arr.nbytes
        return arr

    kind, ctx, pos, peak = take("<u1", n), take("<i8", n), take("<i4", n), take("<i4", n)
    value = take("<f4", n)
    toks = take("<i2" if tbytes == 2 else "<i4", n * width).reshape(n, width)
    acts = take("<f2", n * width).reshape(n, width)
    out = []
    for i in range(n):
        keep = toks[i] >= 0
        out.append(
            Example(
                kind=KINDS[int(kind[i])],
                context=int(ctx[i]),
                position=int(pos[i]),
                activation=float(value[i]),
                peak=int(peak[i]),
                tokens=[int(t) for t in toks[i][keep]],
                acts=[float(a) for a in acts[i][keep]],
            )
        )
    return out


# ----- the store -----------------------------------------------------------------------------------------


class FeatureStore:
    """An open feature store. ``FeatureStore.open(path)`` reads one; :meth:`create` starts a new one."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path, self.conn = path, conn
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        self._vocab: dict[int, str] | None = None

    # ---- opening ----

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any]) -> FeatureStore:
        """A new, empty store at ``path`` (which must not exist) with ``meta``."""
        path = Path(path)
        conn = _connect(path)
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in {**meta, "schema_version": SCHEMA_VERSION}.items()],
            )
        return cls(path, conn)

    @classmethod
    def open(
        cls, path: str | Path, *, fingerprint: str | None = None, writable: bool = False
    ) -> FeatureStore:
        """The store at ``path``; one-line errors for a missing file, a file that is not a store, a
        store of a newer schema, or (given ``fingerprint``) a store of another dictionary."""
        path = Path(path)
        if not path.is_file():
            raise ClewError(f"{path}: no such feature store")
        try:
            conn = _connect(path, readonly=not writable)
            conn.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.DatabaseError:
            raise ClewError(f"{path}: not a clew feature store (not an SQLite database)") from None
        try:
            store = cls(path, conn)
        except sqlite3.DatabaseError:
            raise ClewError(f"{path}: not a clew feature store (no meta table)") from None
        version = store.meta.get("schema_version")
        if not isinstance(version, int):
            raise ClewError(f"{path}: not a clew feature store (no schema version)")
        if version > SCHEMA_VERSION:
            raise ClewError(
                f"{path}: written by a newer clew (store schema {version}, this clew reads up to "
                f"{SCHEMA_VERSION}); upgrade clew"
            )
        if store.meta.get("complete") is not True:
            raise ClewError(f"{path}: an unfinished collection (rerun `clew features collect` to finish it)")
        if fingerprint is not None and store.meta.get("dictionary_fingerprint") != fingerprint:
            raise ClewError(
                f"{path}: this store was built for another dictionary ({store.meta.get('dictionary')}); "
                "collect one for this dictionary with `clew features collect`"
            )
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- facts ----

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def n_features(self) -> int:
        return int(self.meta["n_features"])

    def check_feature(self, layer: int, feature: int) -> None:
        """A one-line error unless ``layer/feature`` is one of the store's features."""
        if layer not in self.layers:
            raise ClewError(f"{self.path}: no layer {layer} (layers: {', '.join(map(str, self.layers))})")
        if not 0 <= feature < self.n_features:
            raise ClewError(
                f"{self.path}: feature {feature} is out of range (layer {layer} has {self.n_features})"
            )

    def vocab(self) -> dict[int, str]:
        """Token id -> text for every token in the store."""
        if self._vocab is None:
            self._vocab = dict(self.conn.execute("SELECT token, text FROM vocab"))
        return self._vocab

    def text(self, token: int) -> str:
        return self.vocab().get(token, f"<{token}>")

    # ---- writing ----

    def set_meta(self, **values: Any) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
            )
        self.meta.update(values)

    def put_features(self, records: Iterable[FeatureRecord], width: int) -> None:
        """Insert (or replace) feature rows and the tokens each peaks on, in one transaction."""
        rows, tokens = [], []
        for r in records:
            rows.append(
                (
                    r.layer,
                    r.feature,
                    r.n_active,
                    r.frequency,
                    r.mean,
                    r.act_min,
                    r.act_max,
                    pack_histogram(r.histogram),
                    json.dumps(rounded_logits(r.top_logits), separators=(",", ":")),
                    json.dumps(rounded_logits(r.bottom_logits), separators=(",", ":")),
                    pack_examples(r.examples, width),
                )
            )
            counts: dict[int, int] = {}
            for e in r.of_kind("top"):
                counts[e.tokens[e.peak]] = counts.get(e.tokens[e.peak], 0) + 1
            tokens += [(t, r.layer, r.feature, c) for t, c in counts.items()]
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.conn.executemany("INSERT OR REPLACE INTO feature_tokens VALUES (?,?,?,?)", tokens)

    def put_vocab(self, texts: dict[int, str]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO vocab VALUES (?, ?)", sorted(texts.items()))
        self._vocab = None

    def put_labels(self, labels: dict[tuple[int, int], str], source: str) -> None:
        """Store ``(layer, feature) -> label`` under ``source`` (``auto`` is the automatic labeller)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?)",
                [(layer, f, source, text) for (layer, f), text in labels.items()],
            )

    # ---- reading ----

    def feature(self, layer: int, feature: int) -> FeatureRecord:
        """The record of ``layer/feature`` (a one-line error when out of range)."""
        self.check_feature(layer, feature)
        row = self.conn.execute("SELECT * FROM features WHERE layer = ? AND feature = ?", (layer, feature))
        found = row.fetchone()
        if found is None:
            return FeatureRecord(layer, feature, 0, 0.0, 0.0, 0.0, 0.0, [], [], [])
        return _record(found)

    def features(self, layer: int | None = None) -> Iterator[FeatureRecord]:
        """Every stored feature (of ``layer``), in (layer, feature) order."""
        sql, args = "SELECT * FROM features", ()
        if layer is not None:
            sql, args = sql + " WHERE layer = ?", (layer,)
        for row in self.conn.execute(sql + " ORDER BY layer, feature", args):
            yield _record(row)

    def labels(self, layer: int, feature: int) -> dict[str, str]:
        """source -> label for one feature."""
        rows = self.conn.execute(
            "SELECT source, label FROM labels WHERE layer = ? AND feature = ?", (layer, feature)
        )
        return dict(rows)

    def label(self, layer: int, feature: int) -> str:
        """The feature's label: a labeller's when there is one (the last source by name), else ``auto``."""
        found = self.labels(layer, feature)
        other = sorted(s for s in found if s != "auto")
        return found[other[-1]] if other else found.get("auto", "")

    def label_map(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
        """(layer, feature) -> label for many features at once."""
        return {(layer, f): self.label(layer, f) for layer, f in pairs}

    def search(self, text: str, limit: int = 20) -> list[tuple[int, int, str, str]]:
        """Features whose label contains ``text``, then those peaking on a token that contains it:
        ``(layer, feature, label, why)``."""
        like = f"%{text.strip()}%"
        found: dict[tuple[int, int], str] = {}
        for layer, f, source in self.conn.execute(
            "SELECT layer, feature, source FROM labels WHERE label LIKE ? ORDER BY layer, feature", (like,)
        ):
            found.setdefault((layer, f), f"label ({source})")
        tokens = (
            [t for t, s in self.vocab().items() if text.strip().lower() in s.lower()] if text.strip() else []
        )
        if tokens:
            marks = ",".join("?" * len(tokens))
            for layer, f, token, count in self.conn.execute(
                f"SELECT layer, feature, token, count FROM feature_tokens WHERE token IN ({marks}) "
                "ORDER BY count DESC, layer, feature",
                tokens,
            ):
                found.setdefault((layer, f), f"peaks on {self.text(token)!r} in {count} top examples")
        return [(layer, f, self.label(layer, f), why) for (layer, f), why in list(found.items())[:limit]]

    # ---- a collection in progress ----

    def get_state(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_state(self, values: dict[str, bytes]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", list(values.items()))

    def clear_state(self) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM state")
        self.conn.execute("VACUUM")


def pack_histogram(counts: list[int] | np.ndarray) -> bytes:
    """Little-endian int64 counts, zlib-compressed."""
    return zlib.compress(np.asarray(counts, dtype="<i8").tobytes(), 6)


def unpack_histogram(blob: bytes) -> list[int]:
    return [int(c) for c in np.frombuffer(zlib.decompress(blob), dtype="<i8")]


def _record(row: tuple) -> FeatureRecord:
    layer, f, n, freq, mean, lo, hi, hist, top, bottom, examples = row
    return FeatureRecord(
        layer=layer,
        feature=f,
        n_active=n,
        frequency=freq,
        mean=mean,
        act_min=lo,
        act_max=hi,
        histogram=unpack_histogram(hist),
        top_logits=[(int(t), float(v)) for t, v in json.loads(top)],
        bottom_logits=[(int(t), float(v)) for t, v in json.loads(bottom)],
        examples=unpack_examples(examples),
    )


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        uri = path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:  # a read-only folder (an installed package): no -shm file possible
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True)
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn

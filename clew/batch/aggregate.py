"""What many graphs say together: for every feature, how often it appears and is kept, its influence
across graphs, the edges that recur, overall and per group of prompts (a prompt field's value).

Graphs are read one at a time (each pruned once, :func:`clew.batch.nodes.view`) and only per-key
running sums are kept, so memory grows with the number of distinct features and edges, not graphs.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clew.attribution import Graph
from clew.batch.nodes import Key, View, describe, view
from clew.batch.stats import bh_qvalues, fisher_exact
from clew.batch.store import GraphStore
from clew.errors import ClewError
from clew.files import replacing

ALL = "*"


@dataclass
class FeatureRow:
    """One feature in one group of graphs."""

    group: str
    """The group's value of the grouping field (``*``: every graph)."""
    layer: int
    """The feature's layer."""
    index: int
    """The feature's index in its layer's dictionary."""
    n_graphs: int
    """Graphs in the group."""
    present: int
    """Graphs in which the feature is active (unpruned)."""
    kept: int
    """Graphs in which pruning keeps it."""
    mean_influence: float
    """Its share of the graph's influence on the targets, averaged over the graphs where it is present."""
    std_influence: float
    """The spread (standard deviation) of that share over the same graphs."""
    mean_activation: float
    """Its largest activation in a graph, averaged over the graphs where it is present."""
    kept_elsewhere: int = 0
    """Graphs outside the group in which it is kept."""
    n_elsewhere: int = 0
    """Graphs outside the group."""
    specificity: float = 0.0
    """kept / n_graphs - kept_elsewhere / n_elsewhere."""
    p_value: float = 1.0
    """Fisher's exact test, kept here against kept elsewhere."""
    q_value: float = 1.0
    """Benjamini-Hochberg over the group's features."""


@dataclass
class EdgeRow:
    """One recurring edge (between feature identities, tokens and logits, positions summed) in one group."""

    group: str
    """The group's value (``*``: every graph)."""
    source: str
    """The source node's identity."""
    target: str
    """The target node's identity."""
    kept: int
    """Graphs whose pruned graph has this edge."""
    n_graphs: int
    """Graphs in the group."""
    mean_weight: float
    """The edge's weight averaged over those graphs."""
    std_weight: float
    """Its spread over those graphs."""


@dataclass
class Aggregate:
    groups: dict[str, int]
    """group -> number of graphs."""
    features: list[FeatureRow]
    """Every feature active in some graph, per group."""
    edges: list[EdgeRow]
    """Edges kept in at least ``min_edge_graphs`` graphs of a group."""
    source: dict[str, str] = field(default_factory=dict)
    """The model and dictionary of the stores."""


class _Sums:
    __slots__ = ("present", "kept", "inf", "inf2", "act")

    def __init__(self) -> None:
        self.present = self.kept = 0
        self.inf = self.inf2 = self.act = 0.0


def graphs_of(
    stores: list[GraphStore], where: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, Any], Graph]]:
    """(index row, graph) for every done graph of the stores whose fields match ``where``."""
    for store in stores:
        for row in store.rows():
            if where and any(str(field_value(row, k)) != v for k, v in where.items()):
                continue
            yield row, Graph.load(store.graph_path(row))


def field_value(row: dict[str, Any], name: str) -> Any:
    """A prompt field (from the JSONL) or an index column (``top_token``, ``worker`` ...)."""
    if name in (row.get("fields") or {}):
        return row["fields"][name]
    if name in row:
        return row[name]
    raise ClewError(f"no prompt field or index column {name!r} (fields: {sorted(row.get('fields') or {})})")


def aggregate(
    stores: list[GraphStore],
    group_by: str | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    min_edge_graphs: int = 2,
    progress: bool = True,
) -> Aggregate:
    """Count, average and test every feature and kept edge over the stores' graphs, per group."""
    sums: dict[str, dict[tuple[int, int], _Sums]] = defaultdict(lambda: defaultdict(_Sums))
    edges: dict[str, dict[tuple[Key, Key], list[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0, 0.0, 0.0])
    )
    groups: dict[str, int] = defaultdict(int)
    total = sum(s.counts().get("done", 0) for s in stores)
    if total == 0:
        raise ClewError("no traced graph in " + ", ".join(str(s.root) for s in stores))
    for row, graph in tqdm(
        graphs_of(stores), total=total, desc="aggregate", unit="graph", disable=not progress
    ):
        v = view(graph, node_threshold, edge_threshold)
        names = [ALL] + ([str(field_value(row, group_by))] if group_by else [])
        for name in names:
            groups[name] += 1
            _add(sums[name], edges[name], v)
    features: list[FeatureRow] = []
    for name, table in sums.items():
        rows = [_feature_row(name, groups[name], key, s) for key, s in table.items()]
        if name != ALL:
            _specificity(rows, sums[ALL], groups[ALL] - groups[name])
        features += sorted(rows, key=lambda r: (-r.kept, -r.mean_influence))
    edge_rows = [
        EdgeRow(name, describe(src), describe(tgt), int(c), groups[name], w / c, _std(w, w2, c))
        for name, table in edges.items()
        for (src, tgt), (c, w, w2) in table.items()
        if c >= min_edge_graphs
    ]
    edge_rows.sort(key=lambda e: (e.group != ALL, e.group, -e.kept, -abs(e.mean_weight)))
    manifest = stores[0].manifest() or {}
    return Aggregate(
        dict(groups), features, edge_rows, {k: manifest.get(k, "") for k in ("model", "dictionary")}
    )


def _add(table: dict[tuple[int, int], _Sums], edges: dict[tuple[Key, Key], list[float]], v: View) -> None:
    for key, inf in v.influence.items():
        if key[0] != "F":
            continue
        s = table[(key[1], key[2])]
        s.present += 1
        s.kept += key in v.kept
        s.inf += inf
        s.inf2 += inf * inf
        s.act += v.activation.get(key, 0.0)
    for pair, w in v.edges.items():
        acc = edges[pair]
        acc[0] += 1
        acc[1] += w
        acc[2] += w * w


def _std(total: float, squares: float, n: int) -> float:
    return math.sqrt(max(squares / n - (total / n) ** 2, 0.0)) if n > 1 else 0.0


def _feature_row(group: str, n: int, key: tuple[int, int], s: _Sums) -> FeatureRow:
    return FeatureRow(
        group,
        key[0],
        key[1],
        n,
        s.present,
        s.kept,
        s.inf / s.present,
        _std(s.inf, s.inf2, s.present),
        s.act / s.present,
    )


def _specificity(rows: list[FeatureRow], everywhere: dict[tuple[int, int], _Sums], n_else: int) -> None:
    for r in rows:
        r.kept_elsewhere = everywhere[(r.layer, r.index)].kept - r.kept
        r.n_elsewhere = n_else
        r.specificity = r.kept / r.n_graphs - (r.kept_elsewhere / n_else if n_else else 0.0)
        r.p_value = fisher_exact(r.kept, r.n_graphs, r.kept_elsewhere, n_else) if n_else else 1.0
    for r, q in zip(rows, bh_qvalues([r.p_value for r in rows])):
        r.q_value = q


# --- output ------------------------------------------------------------------------------------------------


def write_table(rows: list[Any], path: str | Path) -> Path:
    """Rows of a dataclass to CSV, or to Parquet when ``path`` ends in ``.parquet`` (needs pyarrow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ClewError(f"{path}: nothing to write")
    names = [f.name for f in fields(rows[0])]
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ClewError(
                "writing Parquet needs pyarrow: pip install pyarrow (or give a .csv path)"
            ) from None
        with replacing(path) as tmp:  # a fresh temporary (never a planted link), renamed into place
            pq.write_table(pa.table({n: [getattr(r, n) for r in rows] for n in names}), tmp)
        return path
    if path.suffix != ".csv":
        raise ClewError(f"{path}: give a .csv or .parquet path")
    with replacing(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in rows:
            d = asdict(r)
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})
    return path


def _specific(rows: list[FeatureRow]) -> list[FeatureRow]:
    """Features kept more often in the group than elsewhere, the most significant first."""
    return sorted((r for r in rows if r.specificity > 0), key=lambda r: (r.p_value, -r.mean_influence))


def summary(
    agg: Aggregate,
    labels: dict[tuple[int, int], str] | None = None,
    top: int = 6,
    show: list[str] | None = None,
) -> str:
    """What recurs everywhere; each group's most specific features; for the groups in ``show``, what recurs
    in every graph of the group and what is specific to it."""
    by_group: dict[str, list[FeatureRow]] = defaultdict(list)
    for r in agg.features:
        by_group[r.group].append(r)

    def name(r: FeatureRow) -> str:
        return describe(("F", r.layer, r.index), labels)

    lines = []
    everywhere = by_group[ALL]
    n = agg.groups[ALL]
    lines.append(f"{n} graphs; {len(everywhere)} distinct features active, recurring most:")
    for r in everywhere[:top]:
        lines.append(
            f"  {name(r):<34} kept in {r.kept:>4}/{n}, active in {r.present:>4}; influence {r.mean_influence:.3f} ± {r.std_influence:.3f}"
        )
    edges = [e for e in agg.edges if e.group == ALL and e.source.startswith("L") and e.target.startswith("L")]
    if edges:
        lines.append("recurring feature-to-feature edges:")
        for e in edges[:top]:
            lines.append(
                f"  {e.source} -> {e.target}: in {e.kept}/{n} graphs, weight {e.mean_weight:.3f} ± {e.std_weight:.3f}"
            )
    names = [g for g in agg.groups if g != ALL]
    if show:
        missing = [g for g in show if g not in agg.groups]
        if missing:
            raise ClewError(f"no group {missing[0]!r} (groups: {', '.join(sorted(names)[:12])} ...)")
    if names:
        lines.append(
            f"the features most specific to each group (kept here / elsewhere, Fisher p; {len(names)} groups):"
        )
    for g in sorted(names):
        best = _specific(by_group[g])[:3]
        lines.append(
            f"  {g} ({agg.groups[g]}): "
            + "; ".join(
                f"{name(r)} {r.kept}/{r.n_graphs} vs {r.kept_elsewhere}/{r.n_elsewhere} p={r.p_value:.0e}"
                for r in best
            )
        )
    for g in show or []:
        rows, size = by_group[g], agg.groups[g]
        every = sorted((r for r in rows if r.kept == size), key=lambda r: (-r.specificity, -r.mean_influence))
        common = sum(r.kept_elsewhere == r.n_elsewhere for r in every)
        lines.append(f"{g} ({size} graphs):")
        lines.append(
            f"  kept in every graph of the group: {len(every)} ({common} of them kept in every graph "
            "elsewhere too); the least common elsewhere first:"
        )
        lines.append("    " + ", ".join(name(r) for r in every[:top]))
        lines.append("  specific (kept here / kept elsewhere, Fisher p, BH q):")
        for r in _specific(rows)[:top]:
            lines.append(
                f"    {name(r):<32} {r.kept}/{size} vs {r.kept_elsewhere}/{r.n_elsewhere}  p={r.p_value:.1e} q={r.q_value:.1e}"
            )
    return "\n".join(lines)

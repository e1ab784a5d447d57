"""What the page is sent: a graph's pruned view, one node's neighbours, a subgraph's scores and edges.

The page never receives the full adjacency. :func:`graph_view` prunes on the server (the pruning of
``clew trace``, :func:`~clew.attribution.prune.prune`, at the slider's node threshold) and sends the
kept nodes and edges as columns; :func:`node_detail` reads one node's row and column of the full
adjacency when it is selected, so its strongest inputs and outputs are there even when pruned away.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.attribution import Graph, prune, scores
from clew.attribution.prune import graph_influence, mass_threshold, nodes_kept, row_sums, target_weights
from clew.errors import ClewError

KINDS = ("feature", "error", "embedding", "logit")
MAX_EDGES = 300_000
"""Most edges one view sends (the strongest); the rest arrive per node on selection."""
SPARSE_LIMIT = 20_000_000
"""Graphs with at most this many non-zero edges are pruned on their edge list (fast, for the slider);
denser ones by :func:`~clew.attribution.prune.prune` on the dense rows."""
CHUNK = 512  # the row chunks of clew.attribution.prune, so that sums are taken in the same order


@dataclass
class Kept:
    """A pruned view: the pruning of :func:`~clew.attribution.prune.prune`, with its edges as a list."""

    node_mask: Tensor
    """(n_nodes,) bool: nodes kept."""
    influence: Tensor
    """(n_nodes,) influence on the logits in the unpruned graph."""
    rows: Tensor
    """(E,) adjacency row of each kept edge."""
    cols: Tensor
    """(E,) source node of each kept edge."""


def _round(x: float, digits: int = 4) -> float:
    if not math.isfinite(x) or x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def _rounded(x: Tensor, digits: int) -> list[float]:
    """``x`` to ``digits`` significant digits, as short JSON numbers (all at once, not one by one)."""
    x = x.double()
    scale = torch.pow(10.0, digits - 1 - torch.floor(torch.log10(x.abs().clamp_min(1e-30))))
    return (torch.round(x * scale) / scale).nan_to_num(0.0, 0.0, 0.0).tolist()


@dataclass
class Prepared:
    """What is computed once per graph and reused by every view of it."""

    keys: list[str]
    """Every node's key (``graph.node_key``)."""
    index: dict[str, int]
    """Key -> node number."""
    layer_pos: Tensor
    """(n_nodes, 2) layer and position of every node."""
    kinds: Tensor
    """(n_nodes,) 0 feature, 1 error, 2 embedding, 3 logit."""
    views: OrderedDict
    """(node threshold, edge threshold) -> :class:`Pruned`, the last few."""
    n_edges: int
    """Non-zero edges of the full adjacency."""
    influence: Tensor | None = None
    """(n_nodes,) influence on the logits, computed on first use."""
    edges: tuple[Tensor, Tensor, Tensor] | None = None
    """(rows, cols, |weight| / row sum) of every non-zero edge, row-major, for sparse enough graphs."""


class Views:
    """Pruned views of graphs, computed once per (graph, thresholds) and kept for a while."""

    def __init__(self, keep: int = 8):
        self._prepared: dict[int, tuple[Tensor, Prepared]] = {}
        self._lock = threading.Lock()
        self.keep = keep

    def prepared(self, graph: Graph) -> Prepared:
        with self._lock:  # by the adjacency: a graph saved with new annotations keeps its views
            hit = self._prepared.get(id(graph.adjacency))
            if hit is not None and hit[0] is graph.adjacency:
                return hit[1]
        n = graph.n_nodes
        keys = [graph.node_key(i) for i in range(n)]
        layer_pos = torch.empty(n, 2, dtype=torch.long)
        kinds = graph.kinds()
        Nf = graph.n_features
        layer_pos[:Nf] = graph.features[:, :2]
        for i in range(Nf, n):
            layer_pos[i] = torch.tensor(graph.layer_pos(i))
        n_edges = int(
            sum(int((graph.adjacency[i : i + 512] != 0).sum()) for i in range(0, len(graph.adjacency), 512))
        )
        prep = Prepared(keys, {k: i for i, k in enumerate(keys)}, layer_pos, kinds, OrderedDict(), n_edges)
        with self._lock:
            if len(self._prepared) >= self.keep:  # forget graphs no longer cached elsewhere
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[id(graph.adjacency)] = (graph.adjacency, prep)
        return prep

    def pruned(self, graph: Graph, node_threshold: float, edge_threshold: float) -> Kept:
        prep = self.prepared(graph)
        key = (round(node_threshold, 3), round(edge_threshold, 4))
        with self._lock:
            if key in prep.views:
                prep.views.move_to_end(key)
                return prep.views[key]
        if prep.n_edges <= SPARSE_LIMIT:
            result = prune_edges(graph, prep, key[0], key[1])
        else:
            dense = prune(graph, key[0], key[1])
            rows, cols = torch.nonzero(dense.edge_mask, as_tuple=True)
            result = Kept(dense.node_mask, dense.influence, rows, cols)
        with self._lock:
            prep.views[key] = result
            while len(prep.views) > 6:
                prep.views.popitem(last=False)
        return result


def _all_edges(graph: Graph, prep: Prepared) -> tuple[Tensor, Tensor, Tensor]:
    if prep.edges is None:
        sums = row_sums(graph.adjacency)
        rows, cols, vals = [], [], []
        for i in range(0, len(graph.adjacency), CHUNK):
            r, c = torch.nonzero(graph.adjacency[i : i + CHUNK], as_tuple=True)
            rows.append(r + i)
            cols.append(c)
            vals.append(graph.adjacency[i : i + CHUNK][r, c].abs().float() / sums[r + i])
        prep.edges = (torch.cat(rows), torch.cat(cols), torch.cat(vals))
    return prep.edges


def prune_edges(graph: Graph, prep: Prepared, node_threshold: float, edge_threshold: float) -> Kept:
    """:func:`~clew.attribution.prune.prune` computed on the list of non-zero edges (the same nodes and
    edges, the influence computed once per graph): milliseconds where the dense passes take seconds."""
    if prep.influence is None:
        prep.influence = graph_influence(graph)
    inf, kinds = prep.influence, prep.kinds
    prunable = (kinds == 0) | (kinds == 1)
    node_mask = nodes_kept(kinds, inf, node_threshold)
    rows, cols, norm = _all_edges(graph, prep)
    row_nodes = graph.row_nodes()
    row_weight = target_weights(graph, inf)
    score = norm * row_weight[rows] * node_mask[row_nodes[rows]] * node_mask[cols]
    bounds = torch.searchsorted(rows, torch.arange(0, len(row_nodes) + CHUNK, CHUNK)).tolist()

    def chunks():
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                yield score[a:b]

    total = sum(float(c.sum()) for c in chunks())
    hi = float(score.max()) if len(score) else 0.0
    tau = mass_threshold(chunks, total, edge_threshold, hi)
    keep = (score >= tau) & node_mask[row_nodes[rows]] & node_mask[cols]
    while True:  # drop features and errors without outgoing edges, and features without incoming ones
        outgoing = torch.zeros(graph.n_nodes, dtype=torch.bool)
        outgoing[cols[keep]] = True
        incoming = torch.zeros(graph.n_nodes, dtype=torch.bool)
        incoming[row_nodes[rows[keep]]] = True
        dead = (prunable & node_mask & ~outgoing) | ((kinds == 0) & node_mask & ~incoming)
        if not dead.any():
            break
        node_mask &= ~dead
        keep &= ~dead[cols] & ~dead[row_nodes[rows]]
    return Kept(node_mask, inf, rows[keep], cols[keep])


def check_threshold(value, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ClewError(f"{name} {value!r}: not a number") from None
    if not 0.0 < x <= 1.0:
        raise ClewError(f"{name} {value!r}: must be above 0 and at most 1")
    return x


def node_labels(graph: Graph, store_labels: dict[int, str] | None = None) -> dict[int, str]:
    """node -> label: the reader's labels (annotations), else the feature store's, else the token texts."""
    out: dict[int, str] = {}
    for j, label in enumerate(graph.logit_labels):
        out[graph.logit_offset + j] = f"{label!r} (p={float(graph.logit_probs[j]):.3f})"
    for p, text in enumerate(graph.token_strings):
        out[graph.embed_offset + p] = repr(text)
    out.update(store_labels or {})
    user = graph.annotations.get("labels") or {}
    if user:
        index = {graph.node_key(n): n for n in range(graph.n_nodes)}
        out.update({index[k]: v for k, v in user.items() if k in index})
    return out


def graph_view(
    graph: Graph,
    pruned: Kept,
    prep: Prepared,
    labels: dict[int, str],
    extra: list[str] = (),
    max_edges: int = MAX_EDGES,
) -> dict:
    """The page's view: kept nodes (and the ``extra`` keys, such as pins, even when pruned) as columns,
    and the kept edges among them as (source, target, weight) columns indexing those nodes."""
    mask = pruned.node_mask.clone()
    for key in extra:
        if key in prep.index:
            mask[prep.index[key]] = True
    nodes = torch.nonzero(mask).squeeze(1)
    position = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    position[nodes] = torch.arange(len(nodes))

    row_nodes = graph.row_nodes()
    rows, cols = pruned.rows, pruned.cols
    weights = graph.adjacency[rows, cols].float()
    targets = row_nodes[rows]
    ok = (position[targets] >= 0) & (position[cols] >= 0)
    targets, cols, weights = targets[ok], cols[ok], weights[ok]
    n_edges = len(weights)
    order = weights.abs().argsort(descending=True)[:max_edges]  # strongest first: the page draws them first
    targets, cols, weights = targets[order], cols[order], weights[order]

    acts = torch.zeros(graph.n_nodes)
    acts[: graph.n_features] = graph.activations.float()
    if graph.error_norms is not None:
        acts[graph.error_offset : graph.embed_offset] = graph.error_norms.float().flatten()
    acts[graph.logit_offset :] = graph.logit_probs.float()
    feature = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    feature[: graph.n_features] = graph.features[:, 2]
    idx = nodes.tolist()
    return {
        "nodes": {
            "key": [prep.keys[i] for i in idx],
            "kind": prep.kinds[nodes].tolist(),
            "layer": prep.layer_pos[nodes, 0].tolist(),
            "pos": prep.layer_pos[nodes, 1].tolist(),
            "feature": feature[nodes].tolist(),
            "act": [_round(x) for x in acts[nodes].tolist()],
            "influence": [_round(x) for x in pruned.influence[nodes].tolist()],
            "label": [labels.get(i, "") for i in idx],
            "kept": pruned.node_mask[nodes].tolist(),
        },
        "edges": {
            "source": position[cols].tolist(),
            "target": position[targets].tolist(),
            "weight": _rounded(weights, 4),
        },
        "counts": {
            "nodes": len(idx),
            "kept_nodes": int(pruned.node_mask.sum()),
            "edges": len(weights),
            "kept_edges": n_edges,
            "all_nodes": graph.n_nodes,
            "all_edges": prep.n_edges,
        },
    }


def _edge_list(graph: Graph, prep: Prepared, labels, nodes: Tensor, weights: Tensor, k: int) -> dict:
    """The ``k`` strongest positive and negative (node, weight) pairs."""
    out = {}
    for sign, name in ((1, "positive"), (-1, "negative")):
        picked = (weights * sign > 0).nonzero().squeeze(1)
        order = (weights[picked] * sign).argsort(descending=True)[:k]
        out[name] = [
            {
                "key": prep.keys[int(nodes[i])],
                "label": labels.get(int(nodes[i]), ""),
                "weight": _round(float(weights[i])),
            }
            for i in picked[order].tolist()
        ]
    return out


def node_detail(graph: Graph, prep: Prepared, labels: dict[int, str], key: str, k: int = 12) -> dict:
    """One node from the full adjacency: its inputs (its row) and outputs (its column), strongest first."""
    if key not in prep.index:
        raise ClewError(f"node {key!r}: not a node of this graph")
    n = prep.index[key]
    row_nodes = graph.row_nodes()
    kind = KINDS[int(prep.kinds[n])]
    out = {
        "key": key,
        "kind": kind,
        "layer": int(prep.layer_pos[n, 0]),
        "pos": int(prep.layer_pos[n, 1]),
        "token": graph.token_strings[int(prep.layer_pos[n, 1])],
        "label": labels.get(n, ""),
    }
    if kind == "feature":
        out["activation"] = _round(float(graph.activations[n]))
        out["feature"] = int(graph.features[n, 2])
    row = (row_nodes == n).nonzero().squeeze(1)
    if len(row):
        weights = graph.adjacency[int(row[0])].float()
        out["inputs"] = _edge_list(graph, prep, labels, torch.arange(graph.n_nodes), weights, k)
    else:
        out["inputs"] = {"positive": [], "negative": []}
    if n < graph.logit_offset:
        weights = graph.adjacency[:, n].float()
        out["outputs"] = _edge_list(graph, prep, labels, row_nodes, weights, k)
    else:
        out["outputs"] = {"positive": [], "negative": []}
    return out


def groups_of(prep: Prepared, pins: list[str], supernodes: list[dict]) -> list[tuple[str, list[int]]]:
    """(name, node numbers) of each supernode, then of each pinned node not in a supernode."""
    groups, grouped = [], set()
    for s in supernodes:
        members = [prep.index[m] for m in s["members"] if m in prep.index]
        if members:
            groups.append((s["name"], members))
            grouped.update(members)
    for key in pins:
        n = prep.index.get(key)
        if n is not None and n not in grouped:
            groups.append((key, [n]))
            grouped.add(n)
    return groups


def subgraph(graph: Graph, prep: Prepared, pins: list[str], supernodes: list[dict]) -> dict:
    """The subgraph of the pinned nodes and supernodes: its replacement and completeness scores (the
    features left out counting as errors) and the edges between its groups, each the exact sum of the
    edges between their members."""
    groups = groups_of(prep, pins, supernodes)
    keep = torch.zeros(graph.n_nodes, dtype=torch.bool)
    for _, members in groups:
        keep[members] = True
    s = scores(graph, keep=keep) if groups else None
    row_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    row_of[graph.row_nodes()] = torch.arange(len(graph.row_nodes()))
    edges = []
    for a, (_, src) in enumerate(groups):
        for b, (_, dst) in enumerate(groups):
            if a == b:
                continue
            rows = row_of[dst]
            rows = rows[rows >= 0]
            if not len(rows):
                continue
            w = float(graph.adjacency[rows][:, src].float().sum())
            if w != 0.0:
                edges.append({"source": a, "target": b, "weight": _round(w)})
    return {
        "groups": [{"name": name, "members": [prep.keys[m] for m in ms]} for name, ms in groups],
        "edges": edges,
        "replacement": None if s is None else _round(s.replacement),
        "completeness": None if s is None else _round(s.completeness),
    }

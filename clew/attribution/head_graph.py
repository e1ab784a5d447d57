"""Heads as nodes: a graph whose edges across positions are routed through the attention heads that carry them.

An edge from a source at position p to a target at position q != p is a sum of paths through the
frozen model, and every such path arrives at q for the last time through one head of one layer
(:mod:`clew.attribution.heads_split`). Grouping the paths by that arrival splits the edge exactly:

    edge(s -> t) = sum over heads H of route(s, H, t) + direct(s, t)

with ``direct(s, t) = 0`` for every edge across positions (up to rounding), and ``direct = edge`` for
an edge within one position, which no head carries (the residual stream, the dictionary's skip path
and a head attending to its own position keep a path where it is: those stay inside direct edges).

A head node is one (layer, head, query position): head h of layer l at position q, written
``head L2.H4@9`` (the same name :mod:`clew.qk` gives a head's output there). It stands for everything
that head moved into position q, from all the keys it attends to. One node per query position rather
than per (query, key) pair keeps the picture to one node where the model has one vector (the head's
output at q), and the keys are listed on the node (their attention weights, and with
:func:`clew.qk.annotate_heads` why it attends there).

A head's output is a vector, not a number, so ``route(s, H, t)`` does not factor into an edge into H
times an edge out of H. The file keeps every route, exactly; the head node's edges are flows:

- in-edge ``s -> H`` = the sum over the routed targets t of route(s, H, t): how much of s the head
  delivers (the value path: the part of s's write that the head moves, earlier hops included);
- out-edge ``H -> t`` = the sum over the graph's sources s of route(s, H, t): how much of t's input
  arrives through the head.

Both are exact sums of the stored routes, so every head node balances (what enters is what leaves),
each target's in-edges (direct ones plus those from heads) sum to its row of the original adjacency,
and each source's out-edges sum to its column.

Routes smaller than ``tolerance`` times the largest edge of their target are not stored; they stay in
the direct part, so the split is exact whatever the tolerance (with 0, every route is kept).

The file is a separate type, ``clew-head-graph/1``: the whole original graph (its adjacency
unchanged) plus ``heads`` (Nh, 3) ``[layer, head, position]``, ``routes`` (M, 3) ``[adjacency row,
head node, source node]`` and ``route_weights`` (M,). :class:`~clew.attribution.graph.Graph` and the
engine's node layout are untouched: head nodes are numbered after the graph's nodes,
``graph.n_nodes + i``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clew.attribution.engine import Engine
from clew.attribution.graph import FORMAT as GRAPH_FORMAT
from clew.attribution.graph import Graph
from clew.attribution.heads_split import split_rows
from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.models import Transformer

FORMAT = "clew-head-graph/1"


@dataclass
class HeadGraph:
    """A graph and the exact routing of its edges across positions through head nodes."""

    graph: Graph
    """The attribution graph, unchanged (its adjacency holds the original edges)."""
    heads: Tensor
    """(Nh, 3) ``[layer, head, query position]`` of each head node, sorted; node ``graph.n_nodes + i``."""
    routes: Tensor
    """(M, 3) ``[adjacency row, head node i, source node]`` of each stored route."""
    route_weights: Tensor
    """(M,) route(s, H, t): the weight of the paths from the source to the target arriving through the head."""
    routed_rows: Tensor
    """(Rr,) the adjacency rows whose edges were routed (all rows, or those of a pruned view's targets)."""
    tolerance: float = 0.0
    """Routes below this fraction of their target's largest edge were left in the direct part."""
    patterns: Tensor | None = None
    """(Nh, P) each head node's attention over the key positions (its frozen pattern row)."""
    qk: dict[str, Any] = field(default_factory=dict)
    """Head key -> why it attends where it does (written by :func:`clew.qk.annotate_heads`): the
    top key, its score, the top query x key pairs and each side's top pieces, all exact contributions."""

    # --- nodes ------------------------------------------------------------------------------------------

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    @property
    def head_offset(self) -> int:
        """The node number of head node 0."""
        return self.graph.n_nodes

    def head_key(self, i: int) -> str:
        """``head L2.H4@9``: head 4 of layer 2, what it moved into position 9."""
        layer, head, pos = (int(v) for v in self.heads[i])
        return f"head L{layer}.H{head}@{pos}"

    def describe(self, node: int) -> str:
        """A node's label: the graph's for its nodes, :meth:`head_key` for head nodes."""
        if node >= self.head_offset:
            return self.head_key(node - self.head_offset)
        return self.graph.describe(node)

    def top_keys(self, i: int, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` key positions head node i attends to most, with their attention weights."""
        if self.patterns is None:
            return []
        row = self.patterns[i].float()
        order = row.argsort(descending=True)[:k].tolist()
        return [(p, float(row[p])) for p in order if row[p] > 0]

    # --- edges ------------------------------------------------------------------------------------------

    def direct(self) -> Tensor:
        """(R, n_nodes) the graph's adjacency minus every stored route: what no head node carries."""
        out = self.graph.adjacency.clone()
        r, s = self.routes[:, 0].long(), self.routes[:, 2].long()
        out.index_put_((r, s), -self.route_weights.to(out.dtype), accumulate=True)
        return out

    def head_in(self) -> Tensor:
        """(Nh, n_nodes) in-edges of the head nodes: route(s, H, t) summed over the routed targets."""
        out = torch.zeros(self.n_heads, self.graph.n_nodes)
        h, s = self.routes[:, 1].long(), self.routes[:, 2].long()
        out.index_put_((h, s), self.route_weights.float(), accumulate=True)
        return out

    def head_out(self) -> Tensor:
        """(Nh, R) out-edges of the head nodes to the adjacency rows: route(s, H, t) summed over sources."""
        out = torch.zeros(self.n_heads, len(self.graph.adjacency))
        h, r = self.routes[:, 1].long(), self.routes[:, 0].long()
        out.index_put_((h, r), self.route_weights.float(), accumulate=True)
        return out

    def strength(self, influence: Tensor) -> Tensor:
        """(Nh,) each head node's share of the graph's edge score: the sum over its routes of
        ``|route| / (target's row abs sum) * (target's influence + logit weight)``, the score pruning
        gives an edge (``influence``: the graph's (n_nodes,) node influence)."""
        g = self.graph
        sums = g.adjacency.abs().float().sum(1).clamp_min(1e-30)
        weight = influence[g.row_nodes()].float() + torch.cat(
            [torch.zeros(g.n_features), g.logit_probs.float()]
        )
        r, h = self.routes[:, 0].long(), self.routes[:, 1].long()
        per_route = self.route_weights.abs().float() / sums[r] * weight[r]
        return torch.zeros(self.n_heads).index_add_(0, h, per_route)

    # --- the file ---------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """One safetensors file holding the graph and the routes; :meth:`load` reads it back identically."""
        from safetensors.torch import save_file

        from clew.files import replacing

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.graph.file_parts()
        tensors |= {
            "heads": self.heads,
            "routes": self.routes,
            "route_weights": self.route_weights,
            "routed_rows": self.routed_rows,
        }
        if self.patterns is not None:
            tensors["head_patterns"] = self.patterns
        meta |= {"format": FORMAT, "tolerance": self.tolerance, "qk": self.qk}
        with replacing(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"clew": json.dumps(meta)}
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> HeadGraph:
        path = Path(path)
        tensors, meta = Graph.read_parts(path)
        if meta.get("format") == GRAPH_FORMAT:
            raise ClewError(f"{path}: a plain graph, without heads: route it with `clew trace --heads`")
        if meta.get("format") != FORMAT:
            raise ClewError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        from clew.attribution.graph import _check_file

        _check_file(meta, tensors, path)
        graph = Graph.from_parts(tensors, meta)
        graph.check_finite(str(path))
        return cls(
            graph=graph,
            heads=tensors["heads"],
            routes=tensors["routes"],
            route_weights=tensors["route_weights"],
            routed_rows=tensors["routed_rows"],
            tolerance=float(meta.get("tolerance", 0.0)),
            patterns=tensors.get("head_patterns"),
            qk=meta.get("qk", {}),
        )


def graph_target(engine: Engine, graph: Graph, row: int, feature_numbers: Tensor):
    """The engine's target for adjacency row ``row`` of ``graph`` (``feature_numbers``: each graph
    feature's number among the engine's active features)."""
    if row < graph.n_features:
        return engine.feature_targets(feature_numbers[row : row + 1])
    j = row - graph.n_features
    direction = (
        graph.logit_vectors[j : j + 1].float().to(engine.device)
        if graph.logit_vectors is not None
        else engine.logit_directions(graph.logit_tokens[j : j + 1].to(engine.device))
    )
    return engine.direction_targets(direction)


@torch.no_grad()
def route_heads(
    model: Transformer,
    transcoder: Transcoder,
    graph: Graph,
    rows: Tensor | None = None,
    *,
    tolerance: float = 0.0,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> HeadGraph:
    """Route ``graph``'s edges across positions through head nodes (module docstring).

    ``rows`` are the adjacency rows (targets) to route, default all; one backward pass of ``1 + L H``
    vectors per target (:func:`~clew.attribution.heads_split.split_rows`). A target at position 0
    receives nothing across positions."""
    if tolerance < 0:
        raise ClewError(f"tolerance must be zero or more, got {tolerance}")
    engine = Engine(model, transcoder, graph.tokens.to(model.embed.weight.device), dtype=dtype)
    numbers = engine.feature_numbers(graph.features, lambda i: graph.describe(i))
    columns = graph.layout.columns_in(engine.layout, numbers)  # each graph source's engine column
    H = model.cfg.n_heads
    R = len(graph.adjacency)
    rows = torch.arange(R) if rows is None else torch.as_tensor(rows, dtype=torch.long).unique()
    if len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < R):
        raise ClewError(f"rows must be adjacency rows, 0..{R - 1}")
    row_nodes = graph.row_nodes()
    found: list[tuple[Tensor, ...]] = []  # per target: (row, layer * H + head, position, source, weight)
    bar = tqdm(rows.tolist(), desc="routing through heads", unit="target", disable=not progress, leave=False)
    for r in bar:
        pos = graph.layer_pos(int(row_nodes[r]))[1]
        if pos == 0:
            continue
        weights = split_rows(engine, graph_target(engine, graph, r, numbers))[:, columns].float().cpu()
        limit = tolerance * float(graph.adjacency[r].abs().max())
        lh, src = (
            (weights.abs() > limit).nonzero(as_tuple=True) if limit > 0 else weights.nonzero(as_tuple=True)
        )
        found.append((torch.full_like(lh, r), lh, torch.full_like(lh, pos), src, weights[lh, src]))
    if found:
        row_t, lh, pos_t, src, w = (torch.cat(x) for x in zip(*found))
    else:
        row_t = lh = pos_t = src = torch.zeros(0, dtype=torch.long)
        w = torch.zeros(0)
    keys = torch.stack([lh // H, lh % H, pos_t], 1)  # [layer, head, pos] per route
    heads, node = keys.unique(dim=0, return_inverse=True) if len(keys) else (keys, lh)
    patterns = None
    if len(heads):
        patterns = torch.stack(
            [engine.cache.patterns[int(l)][0, int(h), int(p)].float().cpu() for l, h, p in heads.tolist()]
        )
    return HeadGraph(
        graph=graph,
        heads=heads.to(torch.long),
        routes=torch.stack([row_t, node, src], 1).to(torch.int32),
        route_weights=w.float(),
        routed_rows=rows,
        tolerance=tolerance,
        patterns=patterns,
    )


@dataclass
class RoutedView:
    """A pruned view's kept edges with those across positions routed through head nodes, for display."""

    heads: Tensor
    """(n,) the head nodes shown: those carrying at least ``share`` of some kept edge."""
    into: Tensor
    """(n, n_nodes) in-edges of the shown head nodes, restricted to the kept edges they carry."""
    out: Tensor
    """(n, R) out-edges of the shown head nodes to the adjacency rows, likewise."""
    direct: Tensor
    """(R, n_nodes) each kept edge's weight less the routes shown for it."""
    direct_mask: Tensor
    """(R, n_nodes) bool: direct edges still drawn (within a position, or with at least ``share`` of
    the edge left after the routes shown; an edge of an unrouted row keeps its whole weight)."""


def routed_view(hg: HeadGraph, edge_mask: Tensor, share: float = 0.1) -> RoutedView:
    """Route the kept edges (``edge_mask``, in the adjacency's layout) through the head nodes that carry
    at least ``share`` of each (by absolute value); the rest of each edge stays a direct edge."""
    g = hg.graph
    r, i, s = (x.long() for x in hg.routes.unbind(1))
    w = hg.route_weights.float()
    adj = g.adjacency.float()
    sel = edge_mask[r, s] & (w.abs() >= share * adj[r, s].abs())
    r, i, s, w = r[sel], i[sel], s[sel], w[sel]
    heads, local = i.unique(return_inverse=True)
    into = torch.zeros(len(heads), g.n_nodes).index_put_((local, s), w, accumulate=True)
    out = torch.zeros(len(heads), len(adj)).index_put_((local, r), w, accumulate=True)
    direct = adj.index_put((r, s), -w, accumulate=True)
    direct_mask = edge_mask & ((direct.abs() >= share * adj.abs()) | (direct == adj))
    return RoutedView(heads, into, out, direct, direct_mask)


def strongest(hg: HeadGraph, influence: Tensor, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` head nodes of largest :meth:`HeadGraph.strength`, as (head node i, its share of the total)."""
    s = hg.strength(influence)
    total = float(s.sum()) or 1.0
    order = s.argsort(descending=True)[:k].tolist()
    return [(i, float(s[i]) / total) for i in order]


def summary(hg: HeadGraph, influence: Tensor, k: int = 10) -> str:
    """The strongest head nodes, each with the keys it attends to and its largest in- and out-edges."""
    g = hg.graph
    h_in, h_out = hg.head_in(), hg.head_out()
    row_nodes = g.row_nodes()
    lines = [
        f"{hg.n_heads} head nodes carry {len(hg.routes)} routes into {len(hg.routed_rows)} targets; "
        f"the strongest (share of the routed edge score):"
    ]
    for i, share in strongest(hg, influence, k):
        keys = ", ".join(f"@{p} {g.token_strings[p]!r} {w:.2f}" for p, w in hg.top_keys(i))
        pos = int(hg.heads[i, 2])
        src = int(h_in[i].abs().argmax())
        dst = int(h_out[i].abs().argmax())
        lines.append(
            f"  {share:6.1%}  {hg.head_key(i)} {g.token_strings[pos]!r}  attends {keys}; "
            f"most from {g.describe(src)} ({float(h_in[i, src]):+.3g}), "
            f"most to {g.describe(int(row_nodes[dst]))} ({float(h_out[i, dst]):+.3g})"
        )
        why = hg.qk.get(hg.head_key(i))
        if why and why.get("pairs"):
            (q, qv), (kk, kv) = why["query_side"][0], why["key_side"][0]
            lines.append(
                f"          attends @{why['key']} (score {why['score']:+.3g}): key side {kk} {kv:+.3g}, "
                f"query side {q} {qv:+.3g}"
            )
    return "\n".join(lines)

"""The circuit summary: a graph seen through its supernodes, with the exact edges between them summed.

Boxes are the supernodes, the kept features and error groups that matter on their own (each holding
at least ``single_share`` of the kept nodes' influence; a position's kept error nodes count as one),
the prompt's tokens and the logits. Between two boxes:

- ``weight``: the sum of the raw edges from every member of one to every member of the other: an
  exact direct effect, in the graph's own units (edges within a box are inside it);
- ``flow``: the share of the output's influence that runs along those edges: each node edge scores
  its normalised weight times the influence of its target (plus the target's logit weight), as node
  and edge pruning score them, and a box edge sums its node edges' scores over the total.

Box edges are kept, strongest flow first, until they hold ``edge_share`` of the flow between boxes,
and boxes left on no path from a source to a logit are dropped. Sources are the tokens and the
error groups (the dictionary's misses, which have no inputs in the graph): a group fed by a
position's errors stays, and so do the errors, so that a summary of a poor dictionary shows where
the influence went instead of coming out empty. ``coverage`` is the share of all the
graph's edge score that the kept box edges carry.

**Path ranking.** A path from a token to a logit is ranked by its *bottleneck*: the smallest flow on
any of its edges, i.e. how much of the output's influence could pass through the whole path. Unlike a
product of normalised weights (each under 1, so every extra step costs), a bottleneck does not
favour short paths by construction: a long path of strong edges beats a short one with a weak link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clew.attribution import Analysis, Graph
from clew.attribution.prune import row_sums, target_weights
from clew.circuits.groups import Supernode

KINDS = ("supernode", "feature", "error", "token", "logit")


@dataclass
class Box:
    """One node of the summary."""

    key: str
    """``S1``, ``S2``... for supernodes, else the graph's node key (``token@7``, ``logit@0``...)."""
    name: str
    kind: str
    """One of :data:`KINDS`."""
    members: list[int]
    """The graph's node numbers inside the box."""
    position: int
    layer: float
    """Mean layer of the members (tokens -1, logits ``n_layers``): where the box is drawn."""
    layers: tuple[int, int]
    influence: float
    """The members' summed influence on the logits (as a share of the kept features' and errors')."""

    def label(self) -> str:
        if self.kind == "token":
            return f"{self.name!r}"
        if self.kind == "logit":
            return f"{self.name!r}"
        return f"[{self.name}]"


@dataclass
class Circuit:
    graph: Graph
    boxes: list[Box]
    weight: Tensor
    """(B, B) ``weight[t, s]``: summed raw edges from box s into box t."""
    flow: Tensor
    """(B, B) the share of output influence along those edges."""
    kept: Tensor
    """(B, B) bool: the box edges kept."""
    coverage: float
    """Share of the graph's whole edge score carried by the kept box edges."""
    supernodes: list[Supernode] = field(default_factory=list)
    node_mask: Tensor | None = None
    """(n_nodes,) the pruned graph's nodes, which the summary was made from."""

    def index(self, key: str) -> int:
        return next(i for i, b in enumerate(self.boxes) if b.key == key)

    def paths(self, k: int = 3, limit: int = 20_000) -> list[tuple[float, list[int]]]:
        """The ``k`` strongest paths from a token to a logit by bottleneck flow (module docstring)."""
        out_edges: dict[int, list[int]] = {}
        for t, s in torch.nonzero(self.kept).tolist():
            out_edges.setdefault(s, []).append(t)
        found: list[tuple[float, list[int]]] = []
        stack = [(i, [i], float("inf")) for i, b in enumerate(self.boxes) if b.kind == "token"]
        while stack and len(found) < limit:
            node, path, neck = stack.pop()
            if self.boxes[node].kind == "logit":
                found.append((neck, path))
                continue
            for t in out_edges.get(node, []):
                if t not in path:
                    stack.append((t, path + [t], min(neck, float(self.flow[t, node]))))
        found.sort(key=lambda fp: (-fp[0], len(fp[1]), fp[1]))
        return found[:k]

    def diagram(self, k: int = 3) -> list[str]:
        """The strongest paths as text: ``"Dallas" ─31%→ [Texas] ─22%→ [say a capital] ─40%→ " Austin"``."""
        lines = []
        for neck, path in self.paths(k):
            parts = [self._box_text(path[0])]
            for s, t in zip(path, path[1:]):
                w = float(self.weight[t, s])
                parts.append(
                    f"─{100 * float(self.flow[t, s]):.0f}%{'+' if w >= 0 else '−'}→ {self._box_text(t)}"
                )
            lines.append(" ".join(parts) + f"   (bottleneck {100 * neck:.0f}%)")
        return lines

    def _box_text(self, i: int) -> str:
        b = self.boxes[i]
        if b.kind in ("token", "logit"):
            return b.label()
        where = f"@{b.position}" + (
            f" L{b.layers[0]}" if b.layers[0] == b.layers[1] else f" L{b.layers[0]}–{b.layers[1]}"
        )
        return f"{b.label()}{where}"

    def table(self, examples: int = 2) -> list[str]:
        """Every box but tokens and logits: key, name, size, place and influence, and under a
        supernode named from its own examples, the first ``examples`` of them."""
        shown = {tuple(s.members): s.examples for s in self.supernodes}
        lines = []
        for b in self.boxes:
            if b.kind in ("token", "logit"):
                continue
            n = len(b.members)
            size = f"{n} {'error node' if b.kind == 'error' else 'feature'}{'s' if n != 1 else ''}"
            lines.append(
                f"{b.key:>4} {b.label()}  {size} at {self.graph.token_strings[b.position]!r}@{b.position}, "
                f"layers {b.layers[0]}–{b.layers[1]}, influence {b.influence:.2f}"
            )
            lines += [f"       e.g. {e}" for e in shown.get(tuple(b.members), [])[:examples]]
        return lines

    def to_json(self) -> dict[str, Any]:
        g = self.graph
        edges = [
            {
                "source": self.boxes[s].key,
                "target": self.boxes[t].key,
                "weight": float(self.weight[t, s]),
                "flow": float(self.flow[t, s]),
            }
            for t, s in torch.nonzero(self.kept).tolist()
        ]
        return {
            "boxes": [
                {
                    "key": b.key,
                    "name": b.name,
                    "kind": b.kind,
                    "members": [g.node_key(n) for n in b.members],
                    "position": b.position,
                    "layers": list(b.layers),
                    "influence": b.influence,
                }
                for b in self.boxes
            ],
            "edges": edges,
            "coverage": self.coverage,
            "paths": [
                {"bottleneck": neck, "boxes": [self.boxes[i].key for i in p]} for neck, p in self.paths(5)
            ],
        }


def summarize(
    graph: Graph,
    analysis: Analysis,
    supernodes: list[Supernode],
    labels: dict[int, str] | None = None,
    single_share: float = 0.03,
    edge_share: float = 0.9,
    max_logits: int = 3,
) -> Circuit:
    """The circuit summary of ``graph`` with ``supernodes`` (module docstring)."""
    keep = analysis.pruned.node_mask
    inf = analysis.pruned.influence
    kinds = graph.kinds()
    prunable = keep & ((kinds == 0) | (kinds == 1))
    total_inf = float(inf[prunable].sum()) or 1.0
    labels = labels or {}
    boxes: list[Box] = []

    def layer_span(nodes: list[int]) -> tuple[float, tuple[int, int]]:
        ls = [graph.layer_pos(n)[0] for n in nodes]
        return sum(ls) / len(ls), (min(ls), max(ls))

    for i, s in enumerate(supernodes):
        mean, span = layer_span(s.members)
        boxes.append(
            Box(
                f"S{i + 1}",
                s.name,
                "supernode",
                s.members,
                s.position,
                mean,
                span,
                float(inf[s.members].sum()) / total_inf,
            )
        )
    grouped = {n for s in supernodes for n in s.members}
    for n in range(graph.n_features):
        if bool(keep[n]) and n not in grouped and float(inf[n]) / total_inf >= single_share:
            layer, pos = graph.layer_pos(n)
            boxes.append(
                Box(
                    graph.node_key(n),
                    labels.get(n) or graph.node_key(n),
                    "feature",
                    [n],
                    pos,
                    layer,
                    (layer, layer),
                    float(inf[n]) / total_inf,
                )
            )
    for pos in range(graph.n_pos):
        at_pos = graph.error_offset + pos + graph.n_pos * torch.arange(graph.n_layers)  # layer-major
        errs = [int(n) for n in at_pos if bool(keep[n])]
        share = float(inf[errs].sum()) / total_inf if errs else 0.0
        if errs and share >= single_share:
            mean, span = layer_span(errs)
            boxes.append(Box(f"errors@{pos}", "errors", "error", errs, pos, mean, span, share))
    for pos in range(graph.n_pos):
        n = graph.embed_offset + pos
        boxes.append(
            Box(
                graph.node_key(n),
                graph.token_strings[pos],
                "token",
                [n],
                pos,
                -1.0,
                (-1, -1),
                float(inf[n]) / total_inf,
            )
        )
    for j in range(min(max_logits, graph.n_logits)):
        if j == 0 or float(graph.logit_probs[j]) >= 0.05:
            n = graph.logit_offset + j
            boxes.append(
                Box(
                    graph.node_key(n),
                    graph.logit_labels[j],
                    "logit",
                    [n],
                    graph.n_pos - 1,
                    float(graph.n_layers),
                    (graph.n_layers, graph.n_layers),
                    float(graph.logit_probs[j]),
                )
            )

    # box membership of every node, then summed weights and flows over the node edges between boxes
    B = len(boxes)
    box_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    for i, b in enumerate(boxes):
        box_of[b.members] = i
    rows_box = box_of[graph.row_nodes()]
    rows = torch.nonzero(rows_box >= 0).squeeze(1)
    cols = torch.nonzero(box_of >= 0).squeeze(1)
    block = graph.adjacency[rows][:, cols].float()  # (rows in boxes, columns in boxes)
    into_box = torch.nn.functional.one_hot(box_of[cols], B).float()  # (columns, B)
    sums = row_sums(graph.adjacency)
    tw = target_weights(graph, inf)
    per_edge = tw[rows, None] / sums[rows, None]  # an edge's score is |A| times this (prune's edge score)
    weight = torch.zeros(B, B).index_add_(0, rows_box[rows], block @ into_box)
    flow = torch.zeros(B, B).index_add_(0, rows_box[rows], (block.abs() * per_edge) @ into_box)
    weight.fill_diagonal_(0)
    flow.fill_diagonal_(0)
    flow = flow / (float(tw[sums > 1e-30].sum()) or 1.0)  # every row's scores sum to its target weight

    kept = _keep_edges(flow, edge_share)
    kept, alive = _on_paths(kept, [b.kind for b in boxes])
    coverage = float(flow[kept].sum())
    order = [i for i in range(B) if alive[i]]
    sub = torch.tensor(order, dtype=torch.long)
    return Circuit(
        graph,
        [boxes[i] for i in order],
        weight[sub][:, sub],
        flow[sub][:, sub],
        kept[sub][:, sub],
        coverage,
        supernodes,
        keep.clone(),
    )


def _keep_edges(flow: Tensor, share: float) -> Tensor:
    """The strongest box edges holding ``share`` of the flow between boxes."""
    values, idx = flow.flatten().sort(descending=True)
    cum = values.cumsum(0) / values.sum().clamp_min(1e-30)
    n = int((cum < share).sum()) + 1
    kept = torch.zeros(flow.numel(), dtype=torch.bool)
    kept[idx[:n]] = True
    return kept.view_as(flow) & (flow > 0)


def _on_paths(kept: Tensor, kinds: list[str]) -> tuple[Tensor, Tensor]:
    """Drop boxes that no source reaches or that reach no logit, with their edges. Sources are the
    tokens and the error groups, which have no inputs of their own."""
    B = len(kinds)
    alive = torch.ones(B, dtype=torch.bool)
    while True:
        k = kept & alive[:, None] & alive[None, :]
        has_in = k.any(1) | torch.tensor([x in ("token", "error") for x in kinds])
        has_out = k.any(0) | torch.tensor([x == "logit" for x in kinds])
        now = alive & has_in & has_out
        now |= torch.tensor([x in ("token", "logit") for x in kinds]) & (k.any(0) | k.any(1))
        if torch.equal(now, alive):
            return k, alive
        alive = now

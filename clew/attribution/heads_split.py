"""Which attention heads carry an edge: the exact split of one edge's weight across heads.

An edge from a source s (written at position p_s) to a target t (read at position p_t > p_s) sums
the paths through the frozen replacement model from s to t. Information moves forward in position
only through attention, from a key position to a query position at or after it, so every such path
*arrives* at p_t exactly once: at some layer l, through some head h, a query at p_t attends to a key
at k != p_t; above that layer the path stays at p_t (through the residual stream, a transcoder's skip
path, or the diagonal attention terms ``pattern[p_t, p_t]``). Grouping the paths by that arrival
partitions them, so

    edge(s -> t) = sum over layers l and heads h of e[l, h],

where e[l, h] is the total weight of the paths that arrive at p_t through head h of layer l.

All e[l, h], for every source at once, come from one batched backward pass (:func:`split_rows`). Row 0 carries the target's
vector down at p_t only, keeping just the diagonal attention terms (the "stay" gradient). At each
layer l, the off-diagonal part of the stay gradient through each head h (``pattern_h[p_t, k]`` for
k < p_t, through that head's value and output weights) starts a new row ``1 + l H + h``, which from
there descends through the whole frozen model exactly as in :meth:`Engine.rows`; every row is finally
dotted with the source's vector where it writes. The stay row alone reaches the source only when
p_s = p_t, which is refused: no head carries such an edge.

Shapes: P positions up to the target's, R = 1 + L H rows, D d_model, H heads, K key/value heads, E d_head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clew.attribution.engine import Engine, Targets
from clew.attribution.graph import Graph
from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.models import Transformer


@dataclass
class HeadShare:
    layer: int
    head: int
    weight: float
    """e[l, h]: the weight of the paths arriving at the target's position through this head."""
    share: float
    """``weight / edge``: signed, the shares sum to 1 (0 when the edge is exactly 0)."""


@dataclass
class HeadSplit:
    edge: float
    """The edge weight, as :meth:`Engine.rows` computes it."""
    weights: Tensor
    """(L, H) e[l, h]; they sum to ``edge`` up to rounding."""
    table: list[HeadShare]
    """Every head, by decreasing ``|weight|``."""

    def format(self, k: int = 10) -> str:
        lines = [f"edge weight {self.edge:+.6g} = sum over heads of (the paths' last arrival at the target):"]
        for row in self.table[:k]:
            lines.append(f"  L{row.layer}.H{row.head}  {row.weight:+.6g}  ({row.share:+.1%})")
        rest = sum(r.weight for r in self.table[k:])
        if len(self.table) > k:
            lines.append(f"  {len(self.table) - k} other heads  {rest:+.6g}")
        return "\n".join(lines)


@torch.no_grad()
def split_rows(engine: Engine, target: Targets) -> Tensor:
    """(L H, C) e[l, h] for every source at once: row ``l H + h`` holds, for each engine column, the
    weight of the paths from that source to the single ``target`` whose last arrival at the target's
    position is through head h of layer l. Sources at or after the target's position get 0."""
    if len(target) != 1:
        raise ClewError(f"split one target at a time: got {len(target)} targets")
    L, D, dt = engine.n_layers, engine.d_model, engine.dtype
    H = engine.model.cfg.n_heads
    pos, top = int(target.pos[0]), int(target.layer[0])
    P, R = pos + 1, 1 + L * H
    rows = torch.zeros(R, engine.n_columns, dtype=dt, device=engine.device)
    grad = torch.zeros(P, R, D, dtype=dt, device=engine.device)
    grad[pos, 0] = target.vectors[0].to(dt)
    back = engine.backward
    for layer in range(min(top, L - 1), -1, -1):
        if layer < top:
            back.contract(layer, grad, rows, engine.sources[layer])
            if engine.tc.cfg.skip:
                grad = grad + back.skip_t(layer, grad)
        first = 1 + (layer + 1) * H  # rows started above this layer; those below are still zero
        if first < R:
            moving = grad[:, first:]
            grad[:, first:] = moving + back.attention_t(layer, moving)
        per_head = back.attention_t_by_head(layer, grad[:, :1], pos)  # (P, H, D)
        grad[pos, 0] += per_head[pos].sum(0)  # the diagonal terms: the path stays at pos
        per_head[pos] = 0
        grad[:, 1 + layer * H : first] = per_head  # the off-diagonal terms: the last arrival at pos
    rows[:, engine.embed_offset : engine.embed_offset + P] = torch.einsum(
        "prd,pd->rp", grad, engine.embeddings[:P].to(dt)
    )
    return rows[1:]


@torch.no_grad()
def split_edge(engine: Engine, target: Targets, source: int) -> HeadSplit:
    """Split the edge from engine column ``source`` to the single ``target`` across attention heads."""
    if len(target) != 1:
        raise ClewError(f"split one edge at a time: got {len(target)} targets")
    L, H = engine.n_layers, engine.model.cfg.n_heads
    pos = int(target.pos[0])
    src_pos = engine.source_position(source)
    if src_pos == pos:
        raise ClewError(
            f"source and target are both at position {pos}: the edge runs within one position, through no head"
        )
    if src_pos > pos:
        raise ClewError(
            f"the source (position {src_pos}) comes after the target (position {pos}): there is no edge"
        )
    weights = split_rows(engine, target)[:, source].view(L, H).cpu()
    edge = float(engine.rows(target)[0, source])
    order = weights.flatten().abs().argsort(descending=True)
    table = [
        HeadShare(
            int(i) // H,
            int(i) % H,
            float(weights.flatten()[i]),
            float(weights.flatten()[i]) / edge if edge else 0.0,
        )
        for i in order
    ]
    return HeadSplit(edge, weights, table)


def split_graph_edge(
    model: Transformer,
    transcoder: Transcoder,
    graph: Graph,
    source: int,
    target: int,
    dtype: torch.dtype = torch.float32,
) -> HeadSplit:
    """Split the edge between two nodes of a graph (node numbers as in :class:`Graph`) across heads."""
    for node in (source, target):
        if not 0 <= node < graph.n_nodes:
            raise ClewError(f"node {node} is out of range: the graph has {graph.n_nodes} nodes")
    if graph.kind(target) not in ("feature", "logit"):
        raise ClewError(f"node {target} is {graph.describe(target)}: only features and logits receive edges")
    if graph.kind(source) == "logit":
        raise ClewError(f"node {source} is {graph.describe(source)}: a logit is never a source")
    engine = Engine(model, transcoder, graph.tokens.to(model.embed.weight.device), dtype=dtype)

    def feature(node: int) -> Tensor:
        return engine.feature_numbers(graph.features[node : node + 1], lambda _: graph.describe(node))

    if graph.kind(target) == "feature":
        targets = engine.feature_targets(feature(target))
    else:
        i = target - graph.logit_offset
        direction = (
            graph.logit_vectors[i : i + 1]
            if graph.logit_vectors is not None
            else engine.logit_directions(graph.logit_tokens[i : i + 1].to(engine.device))
        )
        targets = engine.direction_targets(direction.float().to(engine.device))
    if graph.kind(source) == "feature":
        column = int(feature(source)[0])
    else:
        column = graph.layout.shifted_to(engine.layout, source)
    return split_edge(engine, targets, column)

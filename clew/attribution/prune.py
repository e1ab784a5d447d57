"""Influence, pruning and the graph's scores, computed on the stored adjacency rows.

Normalised adjacency: absolute values, each row divided by its sum. Influence on the output is
``w (A + A^2 + ...)`` with ``w`` the logit probabilities; the graph is acyclic, so the series ends, and
it is summed with repeated vector-matrix products. Thresholds are found without sorting the N^2
edge scores: a bisection on the score value, each step one pass over the rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.attribution.graph import Graph

CHUNK = 512  # rows processed at a time, so temporaries stay proportional to CHUNK x n_nodes


def chunk_rows(rows: Tensor) -> int:
    """Rows to take at a time: CHUNK, or fewer for wide rows, so a chunk's temporaries stay under 256 MB."""
    return max(1, min(CHUNK, 2**26 // max(1, rows.shape[1])))


def row_sums(rows: Tensor) -> Tensor:
    """(R,) the sum of absolute values of each row, never zero."""
    step = chunk_rows(rows)
    sums = torch.cat([rows[i : i + step].abs().float().sum(1) for i in range(0, len(rows), step)])
    return sums.clamp_min(1e-30)


def propagate(rows: Tensor, sums: Tensor, x: Tensor) -> Tensor:
    """(n_nodes,) ``x @ normalised(rows)`` for a weight x (R,) on the rows."""
    out = torch.zeros(rows.shape[1], dtype=torch.float32, device=rows.device)
    w = x / sums
    step = chunk_rows(rows)
    for i in range(0, len(rows), step):
        out += w[i : i + step] @ rows[i : i + step].abs().float()
    return out


def influence(
    rows: Tensor, row_nodes: Tensor, start: Tensor, max_steps: int = 10_000, sums: Tensor | None = None
) -> Tensor:
    """(n_nodes,) ``sum_k start A^k`` for k >= 1: how much of the start weight flows through each node.

    ``rows`` (R, n_nodes) are the stored rows of A, ``row_nodes`` (R,) their node indices (-1 for a
    row whose node is no column, such as a logit), ``start`` (R,) the initial weight on each row's
    node (the logit probabilities on logit rows, zero elsewhere). Weight only flows on through nodes
    that have rows, so the series is iterated on the small (R, R) block of A among them, and the full
    width of A is read once at the end. ``sums``: the rows' :func:`row_sums`, when already known.
    """
    sums = row_sums(rows) if sums is None else sums
    has = row_nodes >= 0
    among = torch.zeros(len(rows), len(rows), device=rows.device)
    among[:, has] = rows[:, row_nodes[has]].abs().float() / sums[:, None]  # (R, R)
    x, acc = start.float(), torch.zeros(len(rows), device=rows.device)
    for _ in range(max_steps):
        if float(x.abs().sum()) < 1e-12:
            break
        acc += x
        x = x @ among
    return propagate(rows, sums, acc)


def graph_influence(graph: Graph) -> Tensor:
    """(n_nodes,) every node's influence on the logits."""
    start = torch.cat([torch.zeros(graph.n_features), graph.logit_probs.float()])
    return influence(graph.adjacency, graph.row_nodes(), start)


def cumulative_threshold(values: Tensor, fraction: float) -> float:
    """The smallest value v such that the entries >= v hold at least ``fraction`` of the total (sorting)."""
    if len(values) == 0 or float(values.sum()) <= 0:
        return float("inf")
    ordered = values.sort(descending=True).values
    cum = ordered.cumsum(0) / ordered.sum()
    k = int(torch.searchsorted(cum, torch.tensor([fraction], dtype=cum.dtype)).clamp(max=len(ordered) - 1))
    return float(ordered[k])


def mass_threshold(score_chunks, total: float, fraction: float, hi: float, bins: int = 4096) -> float:
    """Like :func:`cumulative_threshold` for values too many to sort, with the same answer.

    ``score_chunks()`` yields the (non-negative) values chunk by chunk; ``hi`` is their maximum. One
    pass histograms the mass on a log scale, a second collects the values of the one bin where the
    cumulative mass (from the top) crosses ``fraction``, and only those are sorted.
    """
    if total <= 0 or hi <= 0:
        return float("inf")
    top, span = math.log(hi), math.log(1e12)  # bins cover [hi * 1e-12, hi]; smaller values share bin 0

    def bin_of(v: Tensor) -> Tensor:
        pos = (v.clamp_min(hi * 1e-12).log() - (top - span)) / span * (bins - 1)
        return pos.floor().long().clamp(0, bins - 1)

    mass = torch.zeros(bins, dtype=torch.float64)
    for c in score_chunks():
        v = c[c > 0]
        mass += torch.bincount(bin_of(v), weights=v.double(), minlength=bins)
    above = mass.flip(0).cumsum(0).flip(0)  # mass in this bin and all higher ones
    need = fraction * total
    crossing = int((above >= need).nonzero().max()) if bool((above >= need).any()) else 0
    higher = float(above[crossing + 1]) if crossing + 1 < bins else 0.0
    inside = (
        torch.cat([c[(c > 0) & (bin_of(c) == crossing)] for c in score_chunks()]).sort(descending=True).values
    )
    cum = higher + inside.double().cumsum(0)
    k = int((cum < need).sum())
    return float(inside[min(k, len(inside) - 1)]) if len(inside) else 0.0


def target_weights(graph: Graph, inf: Tensor) -> Tensor:
    """(R,) the weight of each adjacency row's target in an edge's score: its influence plus its logit
    probability. An edge scores ``|A[t, s]| / sum_s' |A[t, s']|`` times this: the share of the output's
    influence that runs along it (each row's scores sum to its target's weight)."""
    return inf[graph.row_nodes()] + torch.cat([torch.zeros(graph.n_features), graph.logit_probs.float()])


def nodes_kept(kinds: Tensor, inf: Tensor, node_threshold: float) -> Tensor:
    """(n_nodes,) bool: the nodes that node pruning keeps: every node ranked by influence (embeddings
    too, as circuit-tracer ranks them), features and errors kept while the ranked nodes hold
    ``node_threshold`` of it; embeddings and logits always."""
    prunable = (kinds == 0) | (kinds == 1)
    return ~prunable | (inf >= cumulative_threshold(inf, node_threshold))


@dataclass
class Pruned:
    node_mask: Tensor
    """(n_nodes,) bool: nodes kept."""
    edge_mask: Tensor
    """(R, n_nodes) bool: edges kept, in the layout of ``graph.adjacency``."""
    influence: Tensor
    """(n_nodes,) influence on the logits in the unpruned graph."""
    cumulative: Tensor
    """(n_nodes,) each node's cumulative influence fraction at its rank (smaller = more important)."""


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes holding ``node_threshold`` of the influence and the edges holding ``edge_threshold``
    of the edge score, then drop features and errors left without outgoing (or features without incoming) edges."""
    kinds = graph.kinds()
    inf = graph_influence(graph)
    prunable = (kinds == 0) | (kinds == 1)
    # every node is ranked (embeddings too, as circuit-tracer does): the threshold and the cumulative
    # fractions the viewers' slider compares with node_threshold then mean the same in both tools
    order = torch.argsort(inf, descending=True)
    cumulative = torch.zeros(graph.n_nodes)
    cumulative[order] = inf[order].cumsum(0) / inf.sum().clamp_min(1e-30)
    node_mask = nodes_kept(kinds, inf, node_threshold)

    rows, row_nodes = graph.adjacency, graph.row_nodes()
    sums = row_sums(rows)
    row_weight = target_weights(graph, inf)

    def chunks():
        for i in range(0, len(rows), CHUNK):
            r = slice(i, i + CHUNK)
            s = rows[r].abs().float() / sums[r, None] * row_weight[r, None]
            s = s * node_mask[row_nodes[r], None] * node_mask[None, :]
            yield s

    total = sum(float(c.sum()) for c in chunks())
    hi = max(float(c.max()) for c in chunks()) if len(rows) else 0.0
    tau = mass_threshold(chunks, total, edge_threshold, hi)
    edge_mask = torch.cat([c >= tau for c in chunks()]) & (rows != 0)
    edge_mask &= node_mask[row_nodes, None] & node_mask[None, :]

    # drop features and errors that lost all their outgoing edges, and features without incoming ones
    row_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    row_of[row_nodes] = torch.arange(len(row_nodes))
    while True:
        outgoing = edge_mask.any(0)
        incoming = torch.zeros(graph.n_nodes, dtype=torch.bool)
        incoming[row_nodes] = edge_mask.any(1)
        dead = (prunable & node_mask & ~outgoing) | ((kinds == 0) & node_mask & ~incoming)
        if not dead.any():
            break
        node_mask &= ~dead
        edge_mask[:, dead] = False
        dead_rows = row_of[dead]
        edge_mask[dead_rows[dead_rows >= 0]] = False
    return Pruned(node_mask, edge_mask, inf, cumulative)


@dataclass
class Scores:
    replacement: float
    """Of the influence reaching the logits from the graph's sources, the fraction from embeddings
    rather than error nodes (features left out of a subgraph count as errors)."""
    completeness: float
    """Per node, the fraction of its normalised input not from error nodes, averaged with
    (influence + logit weight) as weights."""


def scores(graph: Graph, keep: Tensor | None = None) -> Scores:
    """The graph's replacement and completeness scores; with ``keep`` (n_nodes bool), those of the
    subgraph in which the features left out are treated as unexplained, like error nodes."""
    kinds = graph.kinds()
    unexplained = kinds == 1
    if keep is not None:
        unexplained = unexplained | ((kinds == 0) & ~keep)
    rows, row_nodes = graph.adjacency, graph.row_nodes()
    # the influence that error (and left-out) nodes pass on ends there: they are sources, not conduits
    start = torch.cat([torch.zeros(graph.n_features), graph.logit_probs.float()])
    active = ~unexplained[row_nodes]
    inf = influence(rows * active[:, None], row_nodes, start)
    emb = float(inf[kinds == 2].sum())
    err = float(inf[unexplained].sum())
    replacement = emb / max(emb + err, 1e-30)

    sums = row_sums(rows)
    err_frac = (
        torch.cat(
            [(rows[i : i + CHUNK].abs().float() * unexplained).sum(1) for i in range(0, len(rows), CHUNK)]
        )
        / sums
    )
    weight = target_weights(graph, inf)
    if keep is not None:
        weight = weight * keep[row_nodes]
    completeness = float(((1 - err_frac) * weight).sum() / weight.sum().clamp_min(1e-30))
    return Scores(replacement=replacement, completeness=completeness)

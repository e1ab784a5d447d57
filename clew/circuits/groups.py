"""Automatic supernodes: a pruned graph's features grouped into a few that each do one thing.

The rule, in the order it is applied (``docs/circuits.md`` says what it rests on):

1. **One place.** A supernode's features share a token position. Features at different positions move
   different information (attention is frozen: what crosses positions crosses by the graph's edges), so
   no group spans columns.
2. **One role.** Within a position, two features belong together when what they do to the rest of the
   graph is alike: the *profile* of a feature is its total effect (direct and through other features,
   per unit chained as in :func:`clew.intervene.check.through_graph`) on every kept node at *other*
   positions and on the logits (at the last position, where only the logits lie beyond, also on the
   column's own features of later layers), each target's row scaled to unit size. Similarity is the cosine of two
   profiles, minus a layer penalty (``layer_penalty`` times the layer distance over the number of
   layers), so a layer-0 feature and a layer-3 feature that both feed the answer stay apart unless
   they are very alike. Groups grow by average linkage while the best pair is at least ``threshold``.
3. **One side of a contrast.** Given a contrast prompt (the same template with another city), features
   at the differing span that the contrast lacks (inactive, or under half as active at the aligned
   position) are *specific*; the others are *shared*; the two never share a group.
4. **Few.** Groups holding under ``min_share`` of the kept features' influence are dissolved; their
   members stay single nodes (the summary keeps them if they matter on their own).

Every member carries a reason: its position, layer, cosine with its group's mean profile, and its
contrast side. The result is deterministic (no random choices; ties broken by node number) and
editable: a supernode is plain data (``to_json``/``from_json``), stored in ``graph.annotations``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clew.attribution import Analysis, Graph
from clew.errors import ClewError
from clew.intervene.swap import contrast_sides


@dataclass
class Supernode:
    """A named group of one graph's feature nodes."""

    name: str
    """What the group does, from its members' labels (see :mod:`clew.circuits.names`)."""
    members: list[int]
    """The graph's node numbers, most influential first."""
    position: int
    """The token position every member sits at."""
    why: dict[int, str] = field(default_factory=dict)
    """Node number -> why it is in the group."""
    side: str = ""
    """``specific`` or ``shared`` when a contrast was given, else ``""``."""
    source: str = "auto"
    """``auto`` (found here) or ``user`` (edited in the explorer)."""
    examples: list[str] = field(default_factory=list)
    """The group's best examples as text, the peak in ⟦ ⟧ and its score after it, when it was named
    from them (:mod:`clew.circuits.examples`)."""

    def layers(self, graph: Graph) -> tuple[int, int]:
        ls = [int(graph.features[n, 0]) for n in self.members if n < graph.n_features]
        return (min(ls), max(ls)) if ls else (0, 0)

    def to_json(self, graph: Graph) -> dict[str, Any]:
        return {
            "name": self.name,
            "members": [graph.node_key(n) for n in self.members],
            "why": {graph.node_key(n): w for n, w in self.why.items()},
            "side": self.side,
            "source": self.source,
        } | ({"examples": list(self.examples)} if self.examples else {})

    @classmethod
    def from_json(cls, graph: Graph, data: dict[str, Any]) -> Supernode:
        index = graph.node_index()
        try:
            name, keys = str(data["name"]), list(data["members"])
        except (KeyError, TypeError):
            raise ClewError("a supernode needs a 'name' and a list of 'members'") from None
        missing = [k for k in keys if k not in index]
        if missing:
            raise ClewError(f"supernode {name!r}: {missing[0]!r} is not a node of the graph")
        members = [index[k] for k in keys]
        positions = {graph.layer_pos(n)[1] for n in members}
        why = {index[k]: str(v) for k, v in (data.get("why") or {}).items() if k in index}
        return cls(
            name,
            members,
            min(positions) if positions else 0,
            why,
            data.get("side", ""),
            data.get("source", "user"),
            [str(e) for e in data.get("examples") or []],
        )


@dataclass
class GroupingConfig:
    """How features are grouped (module docstring)."""

    threshold: float = 0.5
    """Average-linkage similarity at which two groups at one position still merge."""
    layer_penalty: float = 0.5
    """Subtracted from the cosine per unit of layer distance over the number of layers."""
    min_share: float = 0.02
    """A group holding less than this fraction of the kept features' influence is dissolved."""
    min_size: int = 2
    """A supernode has at least this many members."""


PROFILE_FRACTION = 0.95
"""Profiles are computed over the nodes holding this fraction of the influence, whatever the prune
threshold, so that small changes of the threshold change which features are grouped, not how."""


def per_unit(graph: Graph, nodes: Tensor) -> Tensor:
    """(k, k) ``P[t, s]`` among the graph's ``nodes`` (k,): the direct effect of one unit of source ``s``
    on target ``t`` (a feature's unit is its activation; other sources count once)."""
    row_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    row_of[graph.row_nodes()] = torch.arange(graph.n_features + graph.n_logits)
    rows = row_of[nodes]
    sub = torch.zeros(len(nodes), len(nodes))
    has = rows >= 0
    sub[has] = graph.adjacency[rows[has]][:, nodes].float()
    scale = torch.ones(len(nodes))
    is_feature = nodes < graph.n_features
    scale[is_feature] = graph.activations[nodes[is_feature]].float().clamp_min(1e-12)
    return sub / scale[None, :]


def total_effects(graph: Graph, nodes: Tensor) -> Tensor:
    """(k, k) ``T[t, s]`` among ``nodes``: the whole linear effect of source ``s`` at its activation on
    target ``t``, along every path through them (features pass changes on with slope 1)."""
    P = per_unit(graph, nodes)
    scale = torch.ones(len(nodes))
    is_feature = nodes < graph.n_features
    scale[is_feature] = graph.activations[nodes[is_feature]].float()
    term, total = P, P.clone()
    for _ in range(graph.n_layers + 1):  # paths climb a layer per step
        term = P @ term
        if float(term.abs().max()) < 1e-12:
            break
        total += term
    return total * scale[None, :]


def profile_nodes(graph: Graph, analysis: Analysis, fraction: float = PROFILE_FRACTION) -> Tensor:
    """The nodes profiles are computed over: those node pruning keeps at ``fraction`` of the influence
    (at least the analysis' own threshold), so that a feature's profile does not change with the
    prune threshold."""
    from clew.attribution.prune import nodes_kept

    keep = nodes_kept(graph.kinds(), analysis.pruned.influence, max(fraction, analysis.node_threshold))
    return torch.nonzero(keep | analysis.pruned.node_mask).squeeze(1)


def profiles(graph: Graph, among: Tensor, nodes: list[int]) -> Tensor:
    """(len(nodes), k) each node's total effect on the ``among`` nodes (k,) at other positions and on
    the logits, every target's row scaled to unit size across all the features of ``among``, then each
    profile to unit length."""
    T = total_effects(graph, among)
    layer_pos = torch.tensor([graph.layer_pos(int(n)) for n in among])
    layer, pos = layer_pos[:, 0], layer_pos[:, 1]
    kinds = graph.kinds()[among]
    where = {int(n): i for i, n in enumerate(among)}
    cols = [where[n] for n in nodes]
    # at the last position nothing lies beyond but the logits: there the column's own later layers count too
    outside = (pos[None, :] != pos[:, None]) | (kinds == 3)[None, :]
    outside |= (
        (pos == graph.n_pos - 1)[:, None]
        & (pos[None, :] == graph.n_pos - 1)
        & (layer[None, :] > layer[:, None])
    )
    prof = T.T * outside  # (k sources, k targets)
    prof = prof[kinds == 0]
    prof = prof / prof.abs().sum(0, keepdim=True).clamp_min(1e-12)
    index = torch.cumsum((kinds == 0).long(), 0) - 1
    out = prof[index[cols]]
    return out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)


def group_features(
    graph: Graph,
    analysis: Analysis,
    contrast: Graph | None = None,
    config: GroupingConfig | None = None,
) -> list[Supernode]:
    """The kept features of ``graph`` grouped into unnamed supernodes (module docstring), most
    influential group first. Names are given by :func:`clew.circuits.names.name_supernodes`."""
    config = config or GroupingConfig()
    keep = analysis.pruned.node_mask
    influence = analysis.pruned.influence
    feats = [n for n in range(graph.n_features) if bool(keep[n])]
    if not feats:
        return []
    sides = contrast_sides(graph, contrast) if contrast is not None else {}
    prof = profiles(graph, profile_nodes(graph, analysis), feats)
    layer = graph.features[feats, 0].float()
    sim = prof @ prof.T - config.layer_penalty * (layer[:, None] - layer[None, :]).abs() / max(
        graph.n_layers, 1
    )
    pos = graph.features[feats, 1]
    side = [sides.get(n, "") for n in feats]
    allowed = (pos[:, None] == pos[None, :]) & torch.tensor([[a == b for b in side] for a in side])
    clusters = _average_linkage(sim, allowed, config.threshold)

    total = float(influence[feats].sum()) or 1.0
    out = []
    for members in clusters:
        nodes = sorted((feats[i] for i in members), key=lambda n: (-float(influence[n]), n))
        share = float(influence[nodes].sum()) / total
        if len(nodes) < config.min_size or share < config.min_share:
            continue
        centre = prof[members].mean(0)
        centre = centre / centre.norm().clamp_min(1e-12)
        why = {}
        for i in members:
            n = feats[i]
            l, p, _ = (int(v) for v in graph.features[n])
            reason = f"at {graph.token_strings[p]!r}@{p}, layer {l}; cosine {float(prof[i] @ centre):.2f} with the group's effect on the rest of the graph"
            if side[i]:
                reason += (
                    f"; {side[i]} to this prompt"
                    if side[i] == "specific"
                    else "; shared with the contrast prompt"
                )
            why[n] = reason
        out.append(Supernode("", nodes, int(graph.features[nodes[0], 1]), why, side[members[0]]))
    out.sort(key=lambda s: (-float(influence[s.members].sum()), s.members[0]))
    return out


def _average_linkage(sim: Tensor, allowed: Tensor, threshold: float) -> list[list[int]]:
    """Clusters of indices: repeatedly merge the allowed pair of clusters with the highest average
    similarity while it is at least ``threshold`` (ties: the lowest indices)."""
    n = len(sim)
    clusters: list[list[int]] = [[i] for i in range(n)]
    S = sim.double().clone()
    ok = allowed.clone()
    size = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    S.fill_diagonal_(-float("inf"))
    while True:
        masked = torch.where(
            ok & alive[:, None] & alive[None, :], S, torch.tensor(-float("inf"), dtype=S.dtype)
        )
        masked.fill_diagonal_(-float("inf"))
        best = float(masked.max()) if n else -float("inf")
        if best < threshold:
            break
        flat = int(torch.nonzero(masked == best)[0, 0] * n + torch.nonzero(masked == best)[0, 1])
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        # the merged cluster's average similarity to every other: a size-weighted mean
        S[a] = (S[a] * size[a] + S[b] * size[b]) / (size[a] + size[b])
        S[:, a] = S[a]
        S[a, a] = -float("inf")
        ok[a] = ok[a] & ok[b]
        ok[:, a] = ok[a]
        size[a] += size[b]
        alive[b] = False
        clusters[a] += clusters[b]
        clusters[b] = []
    return [sorted(c) for c in clusters if c]

"""Comparing graphs: two graphs node by node, or two sets of graphs feature by feature with a test.

Two graphs: nodes are matched by identity (a feature's layer and index, an error's layer, a token, a
logit's label) and, with ``positions``, by position, the two prompts' tokens aligned (the equal stretches
match position by position; each differing stretch is one slot, so the city of a template matches the
city). Two sets (contrastive prompts, or the same prompts under two models that share a dictionary):
for every feature, how often pruning keeps it on each side (Fisher's exact test; McNemar's for pairs)
and its influence (a permutation test of the difference of means, zero where absent), with
Benjamini-Hochberg q-values over all features.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from clew.attribution import Graph
from clew.batch.nodes import Key, describe, view
from clew.batch.stats import bh_qvalues, fisher_exact, mcnemar_exact, permutation_pvalues


@dataclass
class NodeChange:
    """One node identity in both graphs."""

    key: Key
    """Its identity, then its slot when positions are matched."""
    name: str
    """Its identity as text, with its position."""
    influence_a: float
    """Its share of A's influence (0 when absent)."""
    influence_b: float
    """Its share of B's influence."""
    kept_a: bool
    """Kept by pruning in A."""
    kept_b: bool
    """Kept by pruning in B."""
    active_a: bool
    """Present (active) in A's unpruned graph."""
    active_b: bool
    """Present in B's unpruned graph."""


@dataclass
class EdgeChange:
    """One kept edge, by its ends' identities."""

    source: str
    target: str
    weight_a: float
    """Its weight in A's pruned graph (0 when absent)."""
    weight_b: float


@dataclass
class GraphDiff:
    prompt_a: str
    prompt_b: str
    top_a: str
    """A's top target and its probability."""
    top_b: str
    alignment: str
    """How positions were matched, in words."""
    only_a: list[NodeChange]
    """Features kept in A and not in B, by influence in A."""
    only_b: list[NodeChange]
    """Features kept in B and not in A, by influence in B."""
    changes: list[NodeChange]
    """Every feature and error, by the size of its change in influence."""
    edges_only_a: list[EdgeChange]
    """Edges kept in A and not in B, by |weight|."""
    edges_only_b: list[EdgeChange]
    edge_changes: list[EdgeChange]
    """Edges kept in both, by the size of the change of their weight."""


def align(a: list[str], b: list[str]) -> tuple[Callable[[int], object], Callable[[int], object], str]:
    """Slots for A's and B's positions: ``("=", i)`` for a position in an equal stretch (i in A's numbering),
    ``("~", k, text_a, text_b)`` for the k-th differing stretch."""
    slots_a: dict[int, object] = {}
    slots_b: dict[int, object] = {}
    spans = []
    k = 0
    for tag, i0, i1, j0, j1 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i0, i1), range(j0, j1)):
                slots_a[i] = slots_b[j] = ("=", i, a[i])
        else:
            slot = ("~", k, "".join(a[i0:i1]), "".join(b[j0:j1]))
            spans.append(f"{slot[2]!r} | {slot[3]!r}")
            for i in range(i0, i1):
                slots_a[i] = slot
            for j in range(j0, j1):
                slots_b[j] = slot
            k += 1
    equal = sum(1 for s in slots_a.values() if s[0] == "=")
    words = f"{equal} positions aligned" + (f"; differing: {', '.join(spans)}" if spans else "")
    return slots_a.__getitem__, slots_b.__getitem__, words


def _slot_text(slot: object) -> str:
    if slot is None:
        return ""
    if slot[0] == "=":
        return f"@{slot[2]!r}"
    return f"@{slot[2]!r}|{slot[3]!r}"


def _name(key: Key, labels: dict | None, positions: bool) -> str:
    base = key[:-1] if positions else key
    if not positions or base[0] in ("T", "L"):  # a token names its position; a logit sits at the last
        return describe(base, labels)
    return describe(base, labels) + _slot_text(key[-1])


def diff_graphs(
    a: Graph,
    b: Graph,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    positions: bool = True,
    labels: dict[tuple[int, int], str] | None = None,
) -> GraphDiff:
    """Match ``a``'s and ``b``'s nodes by identity (and aligned position) and list what differs."""
    if positions:
        slot_a, slot_b, words = align(a.token_strings, b.token_strings)
    else:
        slot_a = slot_b = None
        words = "positions summed (feature identity only)"
    va = view(a, node_threshold, edge_threshold, slot_a)
    vb = view(b, node_threshold, edge_threshold, slot_b)
    keys = [k for k in {**va.influence, **vb.influence} if k[0] in ("F", "E")]
    nodes = [
        NodeChange(
            k,
            _name(k, labels, positions),
            va.influence.get(k, 0.0),
            vb.influence.get(k, 0.0),
            k in va.kept,
            k in vb.kept,
            k in va.influence,
            k in vb.influence,
        )
        for k in keys
    ]
    feats = [n for n in nodes if n.key[0] == "F"]
    only_a = sorted((n for n in feats if n.kept_a and not n.kept_b), key=lambda n: -n.influence_a)
    only_b = sorted((n for n in feats if n.kept_b and not n.kept_a), key=lambda n: -n.influence_b)
    changes = sorted(nodes, key=lambda n: -abs(n.influence_a - n.influence_b))

    def edge(pair, wa, wb) -> EdgeChange:
        return EdgeChange(_name(pair[0], labels, positions), _name(pair[1], labels, positions), wa, wb)

    ea, eb = va.edges, vb.edges
    edges_a = sorted((edge(p, w, 0.0) for p, w in ea.items() if p not in eb), key=lambda e: -abs(e.weight_a))
    edges_b = sorted((edge(p, 0.0, w) for p, w in eb.items() if p not in ea), key=lambda e: -abs(e.weight_b))
    both = sorted(
        (edge(p, w, eb[p]) for p, w in ea.items() if p in eb), key=lambda e: -abs(e.weight_a - e.weight_b)
    )
    return GraphDiff(
        a.prompt, b.prompt, _top(a), _top(b), words, only_a, only_b, changes, edges_a, edges_b, both
    )


def _top(g: Graph) -> str:
    return f"{g.logit_labels[0]!r} (p={float(g.logit_probs[0]):.2f})" if g.n_logits else "-"


def graph_diff_text(d: GraphDiff, top: int = 8) -> str:
    lines = [
        f"A: {d.prompt_a!r} -> {d.top_a}",
        f"B: {d.prompt_b!r} -> {d.top_b}",
        f"matched by feature identity; {d.alignment}",
        f"features kept in A only ({len(d.only_a)}), by influence in A:",
    ]

    def status(n: NodeChange, side: str) -> str:
        other_active = n.active_b if side == "a" else n.active_a
        other = n.influence_b if side == "a" else n.influence_a
        return f"in {'B' if side == 'a' else 'A'}: " + (
            f"active, pruned ({other:.4f})" if other_active else "absent"
        )

    for n in d.only_a[:top]:
        lines.append(f"  {n.name:<52} {n.influence_a:.4f}  ({status(n, 'a')})")
    lines.append(f"features kept in B only ({len(d.only_b)}), by influence in B:")
    for n in d.only_b[:top]:
        lines.append(f"  {n.name:<52} {n.influence_b:.4f}  ({status(n, 'b')})")
    lines.append("largest changes in influence (A -> B):")
    for n in d.changes[:top]:
        lines.append(f"  {n.name:<52} {n.influence_a:.4f} -> {n.influence_b:.4f}")
    for title, edges, side in (
        (f"edges kept in A only ({len(d.edges_only_a)})", d.edges_only_a, "a"),
        (f"edges kept in B only ({len(d.edges_only_b)})", d.edges_only_b, "b"),
    ):
        lines.append(title + ", by |weight|:")
        for e in edges[:top]:
            lines.append(f"  {e.source} -> {e.target}: {e.weight_a if side == 'a' else e.weight_b:+.4f}")
    lines.append(f"edges kept in both ({len(d.edge_changes)}), largest changes:")
    for e in d.edge_changes[:top]:
        lines.append(f"  {e.source} -> {e.target}: {e.weight_a:+.4f} -> {e.weight_b:+.4f}")
    return "\n".join(lines)


# --- two sets of graphs --------------------------------------------------------------------------------------


@dataclass
class FeatureTest:
    """One feature across two sets of graphs."""

    layer: int
    index: int
    kept_a: int
    """Graphs of A in which pruning keeps it."""
    n_a: int
    """Graphs in A."""
    kept_b: int
    n_b: int
    mean_influence_a: float
    """Its share of the influence, averaged over every graph of A (0 where absent)."""
    mean_influence_b: float
    p_kept: float
    """Fisher's exact test on kept_a / n_a against kept_b / n_b (paired: McNemar's exact test)."""
    p_influence: float
    """A permutation test of the difference of mean influence (paired: random sign flips of each pair)."""
    q_value: float = 1.0
    """Benjamini-Hochberg on p_influence over all features."""


@dataclass
class SetDiff:
    n_a: int
    n_b: int
    features: list[FeatureTest]
    """Every feature active in some graph, most significant first."""
    paired: bool = False
    """Whether the i-th graph of A and of B are one prompt (under two models, say), tested as pairs."""


def diff_sets(
    graphs_a: Iterable[Graph],
    graphs_b: Iterable[Graph],
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    paired: bool = False,
    n_perm: int = 9999,
    seed: int = 0,
) -> SetDiff:
    """Which features differ between two sets of graphs, with a test rather than raw counts. With
    ``paired``, the i-th graphs of the two sets are one prompt (the same prompts under two models that
    share a dictionary) and the tests are on the pairs."""
    sides = []
    for graphs in (graphs_a, graphs_b):
        inf: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        kept: dict[tuple[int, int], set[int]] = defaultdict(set)
        n = 0
        for i, g in enumerate(graphs):
            v = view(g, node_threshold, edge_threshold)
            for key, value in v.influence.items():
                if key[0] == "F":
                    inf[(key[1], key[2])][i] = value
                    if key in v.kept:
                        kept[(key[1], key[2])].add(i)
            n += 1
        sides.append((n, inf, kept))
    (n_a, inf_a, kept_a), (n_b, inf_b, kept_b) = sides
    if paired and n_a != n_b:
        raise ValueError(f"paired sets must be as long as each other ({n_a} and {n_b} graphs)")
    keys = sorted(set(inf_a) | set(inf_b))
    xa = torch.tensor([[inf_a[k].get(i, 0.0) for i in range(n_a)] for k in keys], dtype=torch.float64)
    xb = torch.tensor([[inf_b[k].get(i, 0.0) for i in range(n_b)] for k in keys], dtype=torch.float64)
    p_inf = permutation_pvalues(xa.reshape(len(keys), n_a), xb.reshape(len(keys), n_b), paired, n_perm, seed)
    tests = []
    for row, key in enumerate(keys):
        ka, kb = kept_a[key], kept_b[key]
        if paired:
            p_kept = mcnemar_exact(len(ka - kb), len(kb - ka))
        else:
            p_kept = fisher_exact(len(ka), n_a, len(kb), n_b)
        tests.append(
            FeatureTest(
                key[0],
                key[1],
                len(ka),
                n_a,
                len(kb),
                n_b,
                float(xa[row].mean()) if n_a else 0.0,
                float(xb[row].mean()) if n_b else 0.0,
                p_kept,
                float(p_inf[row]),
            )
        )
    for t, q in zip(tests, bh_qvalues([t.p_influence for t in tests])):
        t.q_value = q
    tests.sort(key=lambda t: (t.q_value, t.p_kept, -abs(t.mean_influence_a - t.mean_influence_b)))
    return SetDiff(n_a, n_b, tests, paired)


def set_diff_text(d: SetDiff, labels: dict | None = None, top: int = 12, alpha: float = 0.05) -> str:
    hits = [t for t in d.features if t.q_value < alpha]
    lines = [
        f"A: {d.n_a} graphs, B: {d.n_b} graphs{', paired by prompt' if d.paired else ''}; "
        f"{len(d.features)} features, {len(hits)} differ at q < {alpha}",
        "feature                              kept A     kept B     influence A -> B   p(kept)  p(infl.)  q",
    ]
    for t in d.features[:top]:
        side = "A" if t.mean_influence_a > t.mean_influence_b else "B"
        lines.append(
            f"  {describe(('F', t.layer, t.index), labels):<34} {t.kept_a:>4}/{t.n_a:<5} {t.kept_b:>4}/{t.n_b:<5} "
            f"{t.mean_influence_a:.4f} -> {t.mean_influence_b:.4f} ({side})  {t.p_kept:.1e}  {t.p_influence:.1e}  {t.q_value:.1e}"
        )
    return "\n".join(lines)

"""A graph's predictions beside measurements: zero a group of its features and compare.

For a group S of the graph's feature nodes, each of the graph's logit targets (a direction at the
final norm's output: the token's logit minus the mean logit) is predicted to move by

- ``direct``: minus the sum of the edges from S to the target. This is what the graph states; the
  constrained intervention (everything else frozen) measures exactly this, to float precision.
- ``through graph``: the change carried through the graph's own edges as well: every other feature
  of the graph moves by the change of its pre-activation (the features are in their linear regime,
  slope 1), and passes it on along its edges, down to the logits. A linear model of the free run.

and measured by zeroing S in the constrained mode; in the free mode with attention patterns and
normalisation scales still frozen (features re-encoded, errors frozen: the only nonlinearity left is
the features' own, switching on and off); and in the free mode proper, with the errors frozen and
with them live. The agreement figures are the correlations, over every (group, target), of the
``through graph`` prediction with the measurement with frozen patterns and norms and with the free
one (errors frozen). Where they part, the table shows which nonlinearity did it: the features'
(through graph against norms frozen), or the attention patterns' and norms' (norms frozen against free).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from clew.attribution import Graph
from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.intervene.run import intervene, run_free
from clew.intervene.spec import Edit, Interventions, Node
from clew.models import Transformer
from clew.replacement import LocalReplacement


@dataclass
class CheckRow:
    group: str
    target: str
    direct: float
    through_graph: float
    constrained: float
    frozen_norms: float
    free_frozen: float
    free_live: float


@dataclass
class CheckReport:
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def exact(self) -> float:
        """Largest |direct - constrained| relative to the largest |direct| (should be ~1e-6)."""
        scale = max((abs(r.direct) for r in self.rows), default=0.0) or 1.0
        return max((abs(r.direct - r.constrained) for r in self.rows), default=0.0) / scale

    def _correlation(self, column: str) -> float:
        if len(self.rows) < 2:
            return float("nan")
        x = torch.tensor([r.through_graph for r in self.rows])
        y = torch.tensor([getattr(r, column) for r in self.rows])
        return float(torch.corrcoef(torch.stack([x, y]))[0, 1])

    @property
    def agreement(self) -> float:
        """Correlation between the ``through graph`` prediction and the free measurement (errors frozen)."""
        return self._correlation("free_frozen")

    @property
    def agreement_frozen_norms(self) -> float:
        """Correlation between ``through graph`` and the measurement with patterns and norms frozen."""
        return self._correlation("frozen_norms")

    def markdown(self) -> str:
        lines = [
            "| group | target | direct (graph) | through graph | constrained | patterns and norms frozen "
            "| free, errors frozen | free, errors live |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r.group} | {r.target} | {r.direct:+.3f} | {r.through_graph:+.3f} | {r.constrained:+.3f} | "
            f"{r.frozen_norms:+.3f} | {r.free_frozen:+.3f} | {r.free_live:+.3f} |"
            for r in self.rows
        ]
        lines.append(
            f"\nagreement over {len(self.rows)} rows (correlation of 'through graph' with): patterns and norms "
            f"frozen {self.agreement_frozen_norms:.3f}, free {self.agreement:.3f}; largest |direct - constrained| "
            f"relative to the largest direct change: {self.exact:.1e}"
        )
        return "\n".join(lines)


def zeroing(graph: Graph, nodes: list[int]) -> Interventions:
    """The interventions that zero the graph's feature nodes ``nodes`` at their positions."""
    return Interventions(
        [
            Edit(
                Node(
                    "feature",
                    int(graph.features[n, 0]),
                    (int(graph.features[n, 1]),),
                    int(graph.features[n, 2]),
                )
            )
            for n in nodes
        ]
    )


def through_graph(graph: Graph, group: Tensor) -> Tensor:
    """(T,) the change of each logit target when the features ``group`` (graph node numbers) are zeroed,
    carried through the graph's edges with every other feature moving by its pre-activation's change."""
    Nf = graph.n_features
    acts = graph.activations.float().clamp_min(1e-12)
    per_unit = graph.adjacency[:, :Nf].float() / acts  # (Nf + T, Nf): effect of one unit of activation
    start = torch.zeros(Nf)
    start[group] = -graph.activations[group].float()
    free = torch.ones(Nf, dtype=torch.bool)
    free[group] = False
    delta = start.clone()
    for _ in range(graph.n_layers * graph.n_pos + 1):  # the graph is acyclic: this many steps suffice
        nxt = start + free * (per_unit[:Nf] @ delta)
        if torch.allclose(nxt, delta, atol=1e-9, rtol=0):
            break
        delta = nxt
    return per_unit[Nf:] @ delta


@torch.no_grad()
def check_claims(
    model: Transformer, tc: Transcoder, graph: Graph, groups: dict[str, list[int]]
) -> CheckReport:
    """Predicted and measured changes of the graph's logit targets when each group is zeroed."""
    if graph.logit_vectors is None:
        raise ClewError("the graph has no logit directions stored (an imported graph): trace it with clew")
    tokens = graph.tokens.to(model.embed.weight.device)
    local = LocalReplacement(model, tc, tokens)
    directions = graph.logit_vectors.float()
    report = CheckReport()
    for name, nodes in groups.items():
        for n in nodes:
            if not 0 <= n < graph.n_features:
                raise ClewError(
                    f"group {name!r}: node {n} is not a feature of the graph (0..{graph.n_features - 1})"
                )
        group = torch.tensor(nodes, dtype=torch.long)
        direct = -graph.adjacency[graph.n_features :, group].float().sum(1)
        predicted = through_graph(graph, group)
        edits = zeroing(graph, nodes)
        constrained = intervene(model, tc, tokens, edits, mode="constrained", local=local)
        measured_c = (constrained.normed - constrained.clean_normed) @ directions.T
        measured = {}
        for errors in ("frozen", "live", "norms"):
            if errors == "norms":  # features re-encoded, patterns and norm scales replayed from the clean run
                result = run_free(model, tc, tokens[None], edits, frozen=local.cache.frozen())
                change = result.logits[0, -1].float() - local.logits[-1].float()
            else:
                out = intervene(model, tc, tokens, edits, errors=errors)
                change = out.logits.float() - out.clean_logits.float()
            # the change of each target direction: (W_U row - mean W_U) . final normed = logit - mean logit
            measured[errors] = torch.stack([direction_change(change, t) for t in graph.logit_tokens.tolist()])
        for j, label in enumerate(graph.logit_labels):
            report.rows.append(
                CheckRow(
                    name,
                    repr(label),
                    float(direct[j]),
                    float(predicted[j]),
                    float(measured_c[j]),
                    float(measured["norms"][j]),
                    float(measured["frozen"][j]),
                    float(measured["live"][j]),
                )
            )
    return report


def direction_change(change: Tensor, token: int) -> Tensor:
    """The change of a target read at the final norm's output, from the change of the logits: for a
    token's direction it is the token's logit minus the mean logit (soft-capping aside)."""
    if token >= 0:
        return change[token] - change.mean()
    raise ClewError("checking a custom-direction target needs the constrained mode only")


def groups_by_influence(graph: Graph, k: int = 5, group_size: int = 20) -> dict[str, list[int]]:
    """The ``k`` most influential features one by one, the top ``group_size`` together, and the features
    of each of the three most influential positions together."""
    from clew.attribution.prune import graph_influence

    influence = graph_influence(graph)[: graph.n_features]
    order = influence.argsort(descending=True).tolist()
    groups = {graph.describe(n): [n] for n in order[:k]}
    groups[f"top {group_size} by influence"] = order[:group_size]
    by_pos: dict[int, float] = {}
    for n in range(graph.n_features):
        p = int(graph.features[n, 1])
        by_pos[p] = by_pos.get(p, 0.0) + float(influence[n])
    for p in sorted(by_pos, key=lambda q: -by_pos[q])[:3]:
        members = [n for n in range(graph.n_features) if int(graph.features[n, 1]) == p and influence[n] > 0]
        groups[f"all at {graph.token_strings[p]!r}@{p}"] = members
    return groups

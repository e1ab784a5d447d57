"""Testing a subgraph from the page: zero or scale its nodes, measure the new top tokens, beside the graph's
prediction.

Each logit target of the graph is a direction (the token's logit minus the mean logit). The graph
predicts its change when feature nodes are scaled by ``f``: ``(1 - f)`` times the change of zeroing them
carried through the graph's own edges (:func:`~clew.intervene.check.through_graph`); for error and
embedding nodes, which have no inputs, only their direct edges to the logits. The change is measured
in the constrained mode (the frozen local replacement model: exactly the direct edges) and in the
free mode (the real model with the dictionary, every later feature re-encoded, errors frozen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clew.attribution import Graph
from clew.errors import ClewError
from clew.intervene import Edit, Interventions, intervene, parse_node
from clew.intervene.check import through_graph

OPS = ("zero", "scale")


def _token_text(model, token: int) -> str:
    tok = getattr(model, "tokenizer", None)
    return tok.decode([token]) if tok is not None else str(token)


def _top(model, probs: torch.Tensor, k: int) -> list[dict[str, Any]]:
    values, ids = probs.topk(k)
    return [
        {"token": _token_text(model, i), "id": i, "p": round(p, 4)}
        for i, p in zip(ids.tolist(), values.tolist())
    ]


def run_experiment(
    graph: Graph,
    keys: list[str],
    op: str,
    value: float,
    load: Callable[[Graph], tuple[Any, Any]],
    k: int = 5,
) -> dict[str, Any]:
    """Zero (``op="zero"``) or scale by ``value`` the nodes ``keys`` of ``graph``: the top ``k`` tokens
    before and after in both modes, and each logit target's predicted and measured change."""
    if op not in OPS:
        raise ClewError(f"intervention {op!r}: one of {', '.join(OPS)}")
    if op == "scale" and not (isinstance(value, (int, float)) and -100 <= value <= 100):
        raise ClewError(f"scale {value!r}: a number between -100 and 100")
    if not keys:
        raise ClewError("intervention: no nodes chosen (pin some, tick them, then run)")
    index = graph.node_index()
    factor = 0.0 if op == "zero" else float(value)
    edits, features, others = [], [], []
    for key in keys:
        if key not in index:
            raise ClewError(f"intervention: {key!r} is not a node of this graph")
        if key.startswith("logit"):
            raise ClewError(f"intervention: {key!r} is a logit; choose features, errors or tokens")
        node = parse_node(key)
        edits.append(Edit(node, "zero") if op == "zero" else Edit(node, "scale", factor))
        (features if node.kind == "feature" else others).append(index[key])

    predicted = torch.zeros(graph.n_logits)
    if features:
        predicted += (1 - factor) * through_graph(graph, torch.tensor(features))
    if others:
        predicted += -(1 - factor) * graph.adjacency[graph.n_features :, others].float().sum(1)

    model, tc = load(graph)
    tokens = graph.tokens
    if bool((tokens < 0).any()):
        raise ClewError("this graph has no token ids (an imported graph without them): trace it with clew")
    interventions = Interventions(edits)
    out: dict[str, Any] = {"nodes": keys, "op": op, "value": factor, "modes": {}}
    targets = graph.logit_tokens.tolist()
    measured: dict[str, list[float | None]] = {}
    modes = ["constrained"] + (["free"] if not any(e.node.kind == "error" for e in edits) else [])
    for mode in modes:
        outcome = intervene(model, tc, tokens, interventions, mode=mode)
        change = outcome.logits.float() - outcome.clean_logits.float()
        before, after = outcome.probs(clean=True), outcome.probs()
        out["modes"][mode] = {
            "before": _top(model, before, k),
            "after": _top(model, after, k),
        }
        measured[mode] = [float(change[t] - change.mean()) if t >= 0 else None for t in targets]
    out["targets"] = [
        {
            "label": graph.logit_labels[j],
            "predicted": round(float(predicted[j]), 4),
            **{mode: None if measured[mode][j] is None else round(measured[mode][j], 4) for mode in measured},
        }
        for j in range(graph.n_logits)
    ]
    if "free" not in measured:
        out["note"] = "error nodes can be changed in the constrained mode only"
    return out

"""Testing a subgraph from the page: zero or scale its nodes, measure the new top tokens, beside the graph's
prediction; or swap them for another prompt's.

Each logit target of the graph is a direction (the token's logit minus the mean logit). The graph
predicts its change when feature nodes are scaled by ``f``: ``(1 - f)`` times the change of zeroing them
carried through the graph's own edges (:func:`~clew.intervene.check.through_graph`); for error and
embedding nodes, which have no inputs, only their direct edges to the logits. The change is measured
in the constrained mode (the frozen local replacement model: exactly the direct edges) and in the
free mode (the real model with the dictionary, every later feature re-encoded, errors frozen).

A **swap** takes a second graph of the same template (``... containing Los Angeles is`` beside
``... Dallas is``): the two prompts are aligned (:func:`~clew.intervene.swap.align`), the chosen features
of this graph are zeroed, and the other graph's features specific to its differing span (active there
and not, or at most half as much, at the aligned position here: :func:`~clew.intervene.swap.contrast_sides`)
are put in at the aligned positions with their activations there, in the free mode (errors frozen).
Beside it, the same swap done with matched random features (:func:`~clew.intervene.swap.matched_controls`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clew.attribution import Graph
from clew.errors import ClewError
from clew.intervene import Edit, Interventions, intervene, parse_node
from clew.intervene.check import direction_change, through_graph
from clew.intervene.swap import align, swap_graphs

OPS = ("zero", "scale", "swap")


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
    if op == "swap":
        raise ClewError("intervention 'swap': it needs the other graph (run_swap)")
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
        measured[mode] = [float(direction_change(change, t)) if t >= 0 else None for t in targets]
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


def run_swap(
    graph: Graph,
    keys: list[str],
    other: Graph,
    other_name: str,
    load: Callable[[Graph], tuple[Any, Any]],
    k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Zero the features ``keys`` of ``graph`` and put in ``other``'s specific features (module docstring):
    the top ``k`` tokens before and after, p(this answer) and p(the other's) clean, swapped and in the
    matched control."""
    if not keys:
        raise ClewError("swap: no nodes chosen (pin some, tick them, then run)")
    if other.model_name != graph.model_name:
        raise ClewError(
            f"swap: {other_name} was traced on model {other.model_name!r}, this graph on {graph.model_name!r}"
        )
    for g, name in ((graph, "this graph"), (other, other_name)):
        if bool((g.tokens < 0).any()):
            raise ClewError(
                f"swap: {name} has no token ids (an imported graph without them): trace it with clew"
            )
    _, span, span_other = align(graph.tokens.tolist(), other.tokens.tolist())
    if not span or not span_other:
        raise ClewError(
            f"swap: {graph.prompt!r} and {other.prompt!r} ({other_name}) do not differ in one span of both"
        )
    index = graph.node_index()
    out_nodes = []
    for key in keys:
        if key not in index:
            raise ClewError(f"swap: {key!r} is not a node of this graph")
        if index[key] >= graph.n_features:
            raise ClewError(f"swap: {key!r} is not a feature; a swap exchanges features only")
        out_nodes.append(index[key])
    model, tc = load(graph)
    done = swap_graphs(model, tc, graph, other, out_nodes, seed)
    swapped, control = done.swapped, done.control
    before, after, after_control = swapped.probs(clean=True), swapped.probs(), control.probs()

    def answer(g: Graph) -> dict[str, Any]:
        t = int(g.logit_tokens[0])
        return {
            "label": g.logit_labels[0],
            "before": round(float(before[t]), 4),
            "after": round(float(after[t]), 4),
            "control": round(float(after_control[t]), 4),
        }

    return {
        "nodes": keys,
        "op": "swap",
        "other": other_name,
        "other_prompt": other.prompt,
        "span": [[graph.token_strings[p] for p in span], [other.token_strings[p] for p in span_other]],
        "n_out": done.n_out,
        "n_in": done.n_in,
        "left_out": done.left_out,  # the other's features at positions with no counterpart here
        "control_n": list(done.control_n),
        "modes": {"free": {"before": _top(model, before, k), "after": _top(model, after, k)}},
        "control": {"after": _top(model, after_control, k)},
        "answers": [answer(graph), answer(other)],
    }

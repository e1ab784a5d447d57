"""Swapping what two prompts' answers rest on, found from their graphs, beside matched random controls.

Two prompts of one template that differ in a span (``The capital of the state containing Dallas is``
and ``... Los Angeles is``) are aligned: the common start from the start, the common end from the end,
the two differing spans end-aligned. The features that carry prompt A's answer are found in A's graph
(traced with A's answer as the only target): A's features at its differing span, ranked by their
influence on the answer, that are not active (or at most half as active) at the aligned position of
B, where the same feature would say nothing specific to A. B's features are found the same way.

- **Ablation**: A's top ``k`` such features zeroed in A's free run (errors frozen): A's answer should fall.
- **Swap**: those zeroed and B's top ``k`` put in at the aligned positions with B's activations: the
  model should give B's answer.
- **Controls**: each group replaced by as many other features active at the same (layer, position),
  of the nearest activations, drawn at random several times. A specific effect moves the answer;
  its controls leave it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clew.attribution import Graph, trace
from clew.attribution.prune import graph_influence
from clew.attribution.trace import token_id, tokenize
from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.intervene.run import Outcome, intervene, run_free
from clew.intervene.spec import Edit, Interventions, Node
from clew.models import Transformer


def first_token(model: Transformer, answer: str | int) -> int:
    """The token id of an answer: an id as is, a single-token text's id, or a longer text's first token."""
    if isinstance(answer, int) or model.tokenizer is None:
        return token_id(model, answer)
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ClewError(f"answer {answer!r} has no tokens")
    return ids[0]


def align(a: list[int], b: list[int]) -> tuple[dict[int, int], list[int], list[int]]:
    """A's positions matched to B's (the common start, the common end, the differing spans end-aligned),
    and the differing spans (A's positions, B's positions)."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    span_a, span_b = list(range(start, len(a) - end)), list(range(start, len(b) - end))
    pairs = {p: p for p in range(start)}
    pairs |= {len(a) - 1 - i: len(b) - 1 - i for i in range(end)}
    for i in range(1, min(len(span_a), len(span_b)) + 1):
        pairs[span_a[-i]] = span_b[-i]
    return pairs, span_a, span_b


@dataclass
class Carrier:
    """The features that carry one prompt's answer at its differing span."""

    prompt: str
    answer: str
    graph: Graph
    features: list[tuple[int, int, int, float, float]]
    """(layer, position, index, activation, influence on the answer), most influential first."""

    def top(self, k: int) -> list[tuple[int, int, int, float, float]]:
        return self.features[:k]


def carriers(
    model: Transformer, tc: Transcoder, prompt_a: str, prompt_b: str, answer_a: str, answer_b: str
) -> tuple[Carrier, Carrier, dict[int, int]]:
    """Trace both prompts on their answers and find each one's specific features (module docstring)."""
    ids_a, ids_b = tokenize(model, prompt_a)[0].tolist(), tokenize(model, prompt_b)[0].tolist()
    pairs, span_a, span_b = align(ids_a, ids_b)
    if not span_a or not span_b:
        raise ClewError(f"{prompt_a!r} and {prompt_b!r} do not differ in a span of both")
    graph_a = trace(model, tc, prompt_a, targets=[first_token(model, answer_a)], progress=False)
    graph_b = trace(model, tc, prompt_b, targets=[first_token(model, answer_b)], progress=False)
    found = []
    for graph, other, prompt, answer in (
        (graph_a, graph_b, prompt_a, answer_a),
        (graph_b, graph_a, prompt_b, answer_b),
    ):
        influence = graph_influence(graph)
        rows = [
            (*(int(v) for v in graph.features[n]), float(graph.activations[n]), float(influence[n]))
            for n in specific(graph, other)
            if influence[n] > 0
        ]
        rows.sort(key=lambda r: -r[4])
        found.append(Carrier(prompt, answer, graph, rows))
    return found[0], found[1], pairs


def contrast_sides(graph: Graph, other: Graph) -> dict[int, str]:
    """Feature node -> ``specific`` or ``shared`` at the positions where the two graphs' prompts differ
    (aligned by :func:`align`); other positions are absent. A feature is *shared* when ``other`` has it
    at the aligned position with more than half its activation here, where it would say nothing
    specific to this prompt."""
    pairs, span, _ = align(graph.tokens.tolist(), other.tokens.tolist())
    there = {
        (int(l), int(p), int(i)): float(a) for (l, p, i), a in zip(other.features.tolist(), other.activations)
    }
    sides = {}
    for n, (l, p, i) in enumerate(graph.features.tolist()):
        if p in span:
            q = pairs.get(p)
            active = q is not None and there.get((l, q, i), 0.0) > 0.5 * float(graph.activations[n])
            sides[n] = "shared" if active else "specific"
    return sides


def specific(graph: Graph, other: Graph) -> list[int]:
    """The feature nodes of ``graph`` that :func:`contrast_sides` calls specific, in node order."""
    return [n for n, side in sorted(contrast_sides(graph, other).items()) if side == "specific"]


def matched_controls(
    graph: Graph, group: list[tuple[int, int, int, float, float]], gen: torch.Generator
) -> list[tuple[int, int, int, float]]:
    """As many other active features, each of the same layer and, while any are left, the same position,
    drawn at random among the five of nearest activation."""
    taken = {(l, p, i) for l, p, i, _, _ in group}
    out = []
    table = [
        (int(l), int(p), int(i), float(a)) for (l, p, i), a in zip(graph.features.tolist(), graph.activations)
    ]
    for l, p, _, a, _ in group:
        pool = [r for r in table if r[0] == l and r[1] == p and r[:3] not in taken]
        if not pool:  # the place has no other feature left: the same layer elsewhere in the prompt
            pool = [r for r in table if r[0] == l and r[:3] not in taken]
        if not pool:
            continue
        pool.sort(key=lambda r: abs(r[3] - a))
        pick = pool[int(torch.randint(0, min(5, len(pool)), (1,), generator=gen))]
        taken.add(pick[:3])
        out.append(pick)
    return out


def feature_rows(graph: Graph, nodes: list[int]) -> list[tuple[int, int, int, float, float]]:
    """The graph's feature nodes ``nodes`` as the rows the swap helpers take: (layer, position, index,
    activation, 0.0)."""
    return [(*(int(v) for v in graph.features[n]), float(graph.activations[n]), 0.0) for n in nodes]


def zero_edits(rows) -> list[Edit]:
    return [Edit(Node("feature", l, (p,), i)) for l, p, i, *_ in rows]


def put_edits(rows, to_a: dict[int, int]) -> list[Edit]:
    return [Edit(Node("feature", l, (to_a[p],), i), "set", a) for l, p, i, a, *_ in rows if p in to_a]


@dataclass
class GraphSwap:
    """One graph's chosen features out and another graph's specific ones in, at the aligned positions,
    run beside the same swap of matched random features (:func:`swap_graphs`)."""

    n_out: int
    """Features zeroed."""
    n_in: int
    """The other graph's features put in (those at positions with a counterpart here)."""
    left_out: int
    """The other graph's specific features at positions of its span with no counterpart here (its span
    is longer), which have nowhere to go."""
    control_n: tuple[int, int]
    """Matched random features zeroed and put in by the control."""
    swapped: Outcome
    """The swap in the replacement model, errors frozen at this prompt's values."""
    control: Outcome
    """The control swap, errors frozen."""
    live: Outcome | None = None
    """The swap through the model's own MLPs (errors live), when asked for."""


@torch.no_grad()
def swap_graphs(
    model: Transformer,
    tc: Transcoder,
    graph: Graph,
    other: Graph,
    out_nodes: list[int],
    seed: int = 0,
    live: bool = False,
) -> GraphSwap:
    """Zero ``graph``'s feature nodes ``out_nodes`` and put in ``other``'s features specific to its
    differing span (:func:`specific`) at the aligned positions with their activations there (free
    run, errors frozen; also errors live with ``live``), beside the same swap done with matched
    random features drawn with ``seed``."""
    pairs, _, _ = align(graph.tokens.tolist(), other.tokens.tolist())
    to_this = {q: p for p, q in pairs.items()}
    rows_out, rows_in = feature_rows(graph, out_nodes), feature_rows(other, specific(other, graph))
    tokens = graph.tokens.to(model.embed.weight.device)
    put = put_edits(rows_in, to_this)
    edits = Interventions(zero_edits(rows_out) + put)
    gen = torch.Generator().manual_seed(seed)
    ctrl_out, ctrl_in = matched_controls(graph, rows_out, gen), matched_controls(other, rows_in, gen)
    ctrl_put = put_edits(ctrl_in, to_this)
    control = Interventions(zero_edits(ctrl_out) + ctrl_put)
    return GraphSwap(
        len(rows_out),
        len(put),
        len(rows_in) - len(put),
        (len(ctrl_out), len(ctrl_put)),
        intervene(model, tc, tokens, edits, errors="frozen"),
        intervene(model, tc, tokens, control, errors="frozen"),
        intervene(model, tc, tokens, edits, errors="live") if live else None,
    )


@dataclass
class SwapRow:
    """Next-token probabilities of both answers (and the top token) under one intervention."""

    what: str
    n_features: int
    p_a: float
    p_b: float
    top: str
    control: bool = False


@dataclass
class SwapReport:
    prompt_a: str
    prompt_b: str
    answer_a: str
    answer_b: str
    k: int
    rows: list[SwapRow] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"`{self.prompt_a}` (answer {self.answer_a!r}) with the features of `{self.prompt_b}` (answer "
            f"{self.answer_b!r}), top {self.k} a side:",
            "",
            f"| intervention | features | p({self.answer_a!r}) | p({self.answer_b!r}) | top token |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [f"| {r.what} | {r.n_features} | {r.p_a:.3f} | {r.p_b:.3f} | {r.top!r} |" for r in self.rows]
        return "\n".join(lines)


@torch.no_grad()
def swap_experiment(
    model: Transformer,
    tc: Transcoder,
    prompt_a: str,
    prompt_b: str,
    answer_a: str,
    answer_b: str,
    k: int = 40,
    draws: int = 5,
    seed: int = 0,
    found: tuple[Carrier, Carrier, dict[int, int]] | None = None,
) -> SwapReport:
    """Ablate A's carriers, swap in B's, and the matched random controls of both (module docstring).
    ``found`` is what :func:`carriers` returned for these prompts, when the caller has it already."""
    a_tok, b_tok = first_token(model, answer_a), first_token(model, answer_b)
    carrier_a, carrier_b, pairs = found or carriers(model, tc, prompt_a, prompt_b, answer_a, answer_b)
    to_a = {pb: pa for pa, pb in pairs.items()}
    tokens = tokenize(model, prompt_a)[0]
    report = SwapReport(prompt_a, prompt_b, answer_a, answer_b, k)

    def run(what: str, edits: list[Edit], n: int, control: bool = False) -> None:
        logits = run_free(model, tc, tokens[None].to(model.embed.weight.device), Interventions(edits)).logits[
            0, -1
        ]
        p = torch.softmax(logits.float(), -1)
        top = (
            model.tokenizer.decode([int(p.argmax())]) if model.tokenizer is not None else str(int(p.argmax()))
        )
        report.rows.append(SwapRow(what, n, float(p[a_tok]), float(p[b_tok]), top, control))

    group_a, group_b = carrier_a.top(k), carrier_b.top(k)
    run("none (clean)", [], 0)
    run(f"zero A's top {len(group_a)} carriers", zero_edits(group_a), len(group_a))
    swap = zero_edits(group_a) + put_edits(group_b, to_a)
    run(f"swap: zero A's, put in B's top {len(group_b)}", swap, len(group_a) + len(group_b))
    gen = torch.Generator().manual_seed(seed)
    for d in range(draws):
        ctrl_a = matched_controls(carrier_a.graph, group_a, gen)
        ctrl_b = matched_controls(carrier_b.graph, group_b, gen)
        run(f"control {d + 1}: zero {len(ctrl_a)} matched others", zero_edits(ctrl_a), len(ctrl_a), True)
        run(
            f"control {d + 1}: swap matched others",
            zero_edits(ctrl_a) + put_edits(ctrl_b, to_a),
            len(ctrl_a) + len(ctrl_b),
            True,
        )
    return report


def specific_effect(report: SwapReport) -> dict[str, float]:
    """The ablation's and the swap's numbers beside the controls' (their most extreme draw)."""
    main = [r for r in report.rows if not r.control]
    controls = [r for r in report.rows if r.control]
    ablate_controls = [r for r in controls if "zero" in r.what and "swap" not in r.what]
    swap_controls = [r for r in controls if "swap" in r.what]
    return {
        "clean_p_a": main[0].p_a,
        "ablated_p_a": main[1].p_a,
        "control_ablated_p_a_min": min((r.p_a for r in ablate_controls), default=float("nan")),
        "swapped_p_b": main[2].p_b,
        "control_swapped_p_b_max": max((r.p_b for r in swap_controls), default=float("nan")),
    }

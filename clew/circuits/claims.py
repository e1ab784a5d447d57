"""The summary's claims tested: each box taken out, the measured change beside the predicted one.

For every supernode and single feature of a :class:`~clew.circuits.summary.Circuit`, its members are
zeroed and each logit target of the summary is read three ways:

- **predicted**: the change carried through the graph's edges (:func:`clew.intervene.check.through_graph`),
  of the target's logit minus the mean logit;
- **constrained**: the frozen model with only the members' writes removed, which the graph's direct
  edges describe exactly (a check that the edges are what they claim);
- **patterns frozen**: the replacement model run again with the members zeroed and attention patterns
  and norm scales replayed from the clean run: only the features' own nonlinearity is left;
- **free**: the replacement model run again with the members zeroed (errors frozen): features
  downstream re-encode, attention and norms recompute. This is the claim's real test; where it parts
  from *patterns frozen*, attention moved (a group at the last position can change where later layers
  look, which no frozen-attention graph shows).

Beside them, a **control**: as many other active features of the same layers and position, of the
nearest activations, zeroed the same way (drawn with a seed). A box is **flagged** when taking it out
moves the top target no more than its control does (plus a small margin): the graph gave it weight,
the model does not rely on it.

With a contrast prompt, the **swap**: the prompt's specific features (every active feature at the
differing span that the contrast lacks: its specific supernodes and the weaker ones pruning left out)
zeroed and the contrast's put in at the aligned positions, with their activations there, beside the same
swap done with matched random features. It runs twice: in the replacement model (errors frozen at
this prompt's values) and through the model's own MLPs (errors live: each MLP's real output plus
the change the edits make to its reconstruction). The two differ where the dictionary's error at the
swapped span still carries this prompt's information: a frozen error keeps it, a live one follows
the new input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clew.circuits.summary import Circuit
from clew.dictionaries import Transcoder
from clew.intervene.check import direction_change, through_graph, zeroing
from clew.intervene.run import intervene, run_free
from clew.intervene.spec import Interventions
from clew.intervene.swap import feature_rows, matched_controls, specific, swap_graphs, zero_edits
from clew.models import Transformer
from clew.replacement import LocalReplacement, ReplacementModel

MARGIN = 0.05
"""Nats by which a box's free effect on the top target must exceed its control's not to be flagged."""


@dataclass
class Claim:
    box: str
    """The box's key (``S1``...)."""
    name: str
    n_features: int
    target: str
    """The top logit target's label."""
    predicted: float
    """Change of the target's logit minus the mean logit, carried through the graph."""
    direct: float
    """The same from the box's direct edges alone."""
    constrained: float
    frozen_patterns: float
    """The free run with attention patterns and norm scales replayed from the clean run: features
    re-encode, nothing else moves. Where it agrees with ``predicted`` and ``free`` does not, attention
    (which the graph freezes) did the rest."""
    free: float
    control: float
    """The free change when as many matched random features are zeroed."""
    p_before: float
    p_after: float
    p_control: float
    flagged: bool


@dataclass
class Swap:
    prompt: str
    contrast: str
    answer: str
    contrast_answer: str
    n_out: int
    n_in: int
    p_answer: tuple[float, float, float]
    """p(answer): clean, swapped, control-swapped."""
    p_contrast: tuple[float, float, float]
    """p(contrast answer): clean, swapped, control-swapped."""
    top: tuple[str, str]
    """Top token after the swap and after the control swap."""
    live: tuple[float, float, str] | None = None
    """The same swap through the model's own MLPs (errors live): p(answer), p(contrast answer), top
    token."""
    left_out: int = 0
    """The contrast's specific features at positions of its span with no counterpart here (its span
    is longer), which have nowhere to go: not in :attr:`n_in`."""

    @property
    def worked(self) -> bool:
        return self.top[0] == self.contrast_answer

    @property
    def worked_live(self) -> bool:
        return self.live is not None and self.live[2] == self.contrast_answer


@dataclass
class Claims:
    claims: list[Claim] = field(default_factory=list)
    swap: Swap | None = None

    def markdown(self) -> str:
        lines = [
            "| box | name | features | predicted | constrained | patterns frozen | free | control | p(top) after (control) | |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        if not self.claims:
            lines = ["(no supernode or feature in the summary to take out)"]
        for c in self.claims:
            lines.append(
                f"| {c.box} | {c.name} | {c.n_features} | {c.predicted:+.2f} | {c.constrained:+.2f} "
                f"| {c.frozen_patterns:+.2f} | {c.free:+.2f} "
                f"| {c.control:+.2f} | {c.p_after:.3f} ({c.p_control:.3f}) | {'no effect beyond control' if c.flagged else ''} |"
            )
        if self.claims:
            lines.append(
                f"\nchanges of {self.claims[0].target!r} (its logit minus the mean logit; p before: {self.claims[0].p_before:.3f})"
            )
        if self.swap is not None:
            s = self.swap
            lines.append(
                f"\nswap: {s.n_out} specific features of this prompt out, {s.n_in} of {s.contrast!r} in"
                + (
                    f" ({s.left_out} more at positions of its span with no counterpart here left out)"
                    if s.left_out
                    else ""
                )
                + ": "
                f"p({s.answer!r}) {s.p_answer[0]:.3f} → {s.p_answer[1]:.3f} (control {s.p_answer[2]:.3f}), "
                f"p({s.contrast_answer!r}) {s.p_contrast[0]:.3f} → {s.p_contrast[1]:.3f} (control {s.p_contrast[2]:.3f}); "
                f"top token {s.top[0]!r} (control {s.top[1]!r})"
            )
            if s.live is not None:
                lines.append(
                    f"the same swap through the model's own MLPs (errors live): p({s.answer!r}) {s.live[0]:.3f}, "
                    f"p({s.contrast_answer!r}) {s.live[1]:.3f}; top token {s.live[2]!r}"
                )
        return "\n".join(lines)


@torch.no_grad()
def measure_claims(model: Transformer, tc: Transcoder, circuit: Circuit, seed: int = 0) -> Claims:
    """Take out every supernode and single feature of ``circuit`` (module docstring)."""
    graph = circuit.graph
    tokens = graph.tokens.to(model.embed.weight.device)
    local = LocalReplacement(model, tc, tokens)
    token = int(graph.logit_tokens[0])
    target = graph.logit_labels[0]
    direction = graph.logit_vectors[0].float() if graph.logit_vectors is not None else None
    gen = torch.Generator().manual_seed(seed)
    # one clean run serves every free run below (their frozen errors, and the logits before)
    clean = ReplacementModel(model, tc).clean_run(tokens[None])
    before = clean.logits[0, -1].float()
    frozen = local.cache.frozen()

    def free_logits(edits: Interventions, replay=None) -> torch.Tensor:
        return run_free(model, tc, tokens[None], edits, frozen=replay, clean=clean).logits[0, -1].float()

    out = Claims()
    for box in circuit.boxes:
        if box.kind not in ("supernode", "feature"):
            continue
        members = torch.tensor(box.members)
        predicted = float(through_graph(graph, members)[0])
        direct = -float(graph.adjacency[graph.n_features, members].float().sum())
        edits = zeroing(graph, box.members)
        c = intervene(model, tc, tokens, edits, mode="constrained", local=local)
        constrained = (
            float((c.normed - c.clean_normed) @ direction) if direction is not None else float("nan")
        )
        after = free_logits(edits)
        frozen_patterns = float(
            direction_change(free_logits(edits, frozen) - local.logits[-1].float(), token)
        )
        control_rows = matched_controls(graph, feature_rows(graph, box.members), gen)
        control = free_logits(Interventions(zero_edits(control_rows)))
        free = float(direction_change(after - before, token))
        ctrl = float(direction_change(control - before, token))
        out.claims.append(
            Claim(
                box=box.key,
                name=box.name,
                n_features=len(box.members),
                target=target,
                predicted=predicted,
                direct=direct,
                constrained=constrained,
                frozen_patterns=frozen_patterns,
                free=free,
                control=ctrl,
                p_before=float(torch.softmax(before, -1)[token]),
                p_after=float(torch.softmax(after, -1)[token]),
                p_control=float(torch.softmax(control, -1)[token]),
                flagged=abs(free) <= abs(ctrl) + MARGIN,
            )
        )
    return out


@torch.no_grad()
def measure_swap(
    model: Transformer, tc: Transcoder, circuit: Circuit, contrast: Circuit, seed: int = 0
) -> Swap:
    """This prompt's specific supernodes out, the contrast's in (module docstring)."""
    a, b = circuit.graph, contrast.graph
    # every active feature at the span that the other prompt lacks: the specific supernodes and the
    # specific features pruning left out, which carry the same information more weakly
    done = swap_graphs(model, tc, a, b, specific(a, b), seed, live=True)
    swap, control, live = done.swapped, done.control, done.live
    ta, tb = int(a.logit_tokens[0]), int(b.logit_tokens[0])

    def decode(i: int) -> str:
        return model.tokenizer.decode([i]) if model.tokenizer is not None else str(i)

    return Swap(
        a.prompt,
        b.prompt,
        a.logit_labels[0],
        b.logit_labels[0],
        done.n_out,
        done.n_in,
        (float(swap.probs(clean=True)[ta]), float(swap.probs()[ta]), float(control.probs()[ta])),
        (float(swap.probs(clean=True)[tb]), float(swap.probs()[tb]), float(control.probs()[tb])),
        (decode(int(swap.logits.argmax())), decode(int(control.logits.argmax()))),
        (float(live.probs()[ta]), float(live.probs()[tb]), decode(int(live.logits.argmax()))),
        done.left_out,
    )

"""Running a prompt with interventions, in the frozen model or through the real one, and generating.

Two modes:

- ``constrained``: the prompt's local replacement model with attention patterns, normalisation
  scales and every other feature frozen at the clean run (:func:`~clew.replacement.frozen_forward`).
  Only direct effects act, so zeroing a feature changes each target by exactly minus its edge in the
  attribution graph. Features downstream report their *pre-activations* (their activations stay frozen).
- ``free``: the model runs for real with its MLPs replaced by the dictionary; every feature downstream
  is re-encoded from the changed residual stream. The error terms are either held at their clean
  values (``errors="frozen"``: the replacement model) or recomputed (``errors="live"``: the model's own
  MLPs plus the change the edits make to the reconstruction).

Edits of error nodes exist in the constrained mode only (in the free mode an error is not a node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.intervene.spec import Interventions, Node
from clew.models import Frozen, Transformer
from clew.replacement import CleanRun, LocalReplacement, ReplacementModel, frozen_forward

MODES = ("constrained", "free")
ERRORS = ("frozen", "live")


@dataclass
class Outcome:
    """A run with interventions beside the clean run, at the last position."""

    mode: str
    """``constrained``, ``free (errors frozen)`` or ``free (errors live)``."""
    clean_logits: Tensor
    """(V,) the clean run's logits at the last position."""
    logits: Tensor
    """(V,) the intervened run's logits at the last position."""
    watched: list[tuple[str, float, float]] = field(default_factory=list)
    """(node, clean, new) for the nodes asked about: activations in the free mode, pre-activations in
    the constrained one (where activations stay frozen)."""
    clean_normed: Tensor | None = None
    """(D,) the final norm's output at the last position in the clean frozen run (constrained mode),
    where the graph's logit directions are read."""
    normed: Tensor | None = None
    """(D,) the same in the intervened frozen run (constrained mode)."""

    def probs(self, clean: bool = False) -> Tensor:
        return torch.softmax((self.clean_logits if clean else self.logits).float(), -1)

    def top(self, k: int = 5, clean: bool = False) -> list[tuple[int, float]]:
        """The ``k`` most probable next tokens: (token id, probability)."""
        p = self.probs(clean)
        values, ids = p.topk(k)
        return list(zip(ids.tolist(), values.tolist()))

    def format(self, tokenizer=None, k: int = 5) -> str:
        def name(i: int) -> str:
            return repr(tokenizer.decode([i])) if tokenizer is not None else str(i)

        before = ", ".join(f"{name(i)} {p:.3f}" for i, p in self.top(k, clean=True))
        after = ", ".join(f"{name(i)} {p:.3f}" for i, p in self.top(k))
        lines = [f"before: {before}", f"after ({self.mode}): {after}"]
        what = "pre-activation" if self.mode == "constrained" else "activation"
        lines += [f"  {label}: {what} {c:.4g} -> {n:.4g}" for label, c, n in self.watched]
        return "\n".join(lines)


def _check(
    model: Transformer, tc: Transcoder, interventions: Interventions, watch: Sequence[Node], n_pos: int
):
    for node in [e.node for e in interventions.edits] + list(watch):
        node.at(n_pos)  # positions inside the prompt
        if node.kind in ("feature", "error"):
            if node.layer not in tc.layers:
                raise ClewError(
                    f"{node.label()}: the dictionary has no layer {node.layer} (layers {tc.layers[0]}..{tc.layers[-1]})"
                )
        if node.kind == "feature" and not 0 <= node.feature < tc.cfg.n_features:
            raise ClewError(
                f"{node.label()}: feature {node.feature} is out of range (the dictionary has {tc.cfg.n_features} per layer)"
            )
    for s in interventions.steers:
        if not 0 <= s.layer <= model.cfg.n_layers:
            raise ClewError(
                f"steering at layer {s.layer}: the residual stream enters layers 0..{model.cfg.n_layers}"
            )
        if s.vector.shape != (model.cfg.d_model,):
            raise ClewError(
                f"steering vector of shape {tuple(s.vector.shape)}: the residual stream has {model.cfg.d_model}"
            )
        s.at(n_pos)


def _steering(interventions: Interventions):
    """The residual edit that adds every steering vector where it belongs (None without any)."""
    if not interventions.steers:
        return None

    def edit(layer: int, resid: Tensor) -> Tensor:
        steers = [s for s in interventions.steers if s.layer == layer]
        if not steers:
            return resid
        resid = resid.clone()
        for s in steers:
            resid[:, s.at(resid.shape[1])] += s.vector.to(resid.dtype)
        return resid

    return edit


@torch.no_grad()
def intervene(
    model: Transformer,
    transcoder: Transcoder,
    tokens: Tensor,
    interventions: Interventions,
    *,
    mode: str = "free",
    errors: str = "frozen",
    watch: Sequence[Node] = (),
    local: LocalReplacement | None = None,
) -> Outcome:
    """Run ``tokens`` (P,) with ``interventions`` (see the module docstring for ``mode`` and ``errors``)."""
    if mode not in MODES:
        raise ClewError(f"mode {mode!r}: one of {', '.join(MODES)}")
    if errors not in ERRORS:
        raise ClewError(f"errors {errors!r}: one of {', '.join(ERRORS)}")
    tokens = tokens.flatten().to(model.embed.weight.device)
    _check(model, transcoder, interventions, watch, len(tokens))
    if mode == "constrained":
        return _constrained(local or LocalReplacement(model, transcoder, tokens), interventions, watch)
    return _free(model, transcoder, tokens, interventions, errors, watch)


def _constrained(local: LocalReplacement, interventions: Interventions, watch: Sequence[Node]) -> Outcome:
    P, D, tc = local.n_pos, local.d_model, local.tc
    write = {layer: torch.zeros(1, P, D, device=local.device) for layer in range(local.n_layers)}
    embed = torch.zeros(1, P, D, device=local.device)
    for e in interventions.edits:
        node, pos = e.node, e.node.at(P)
        if node.kind == "feature":
            clean = local.acts[node.layer][pos, node.feature].float()
            delta = e.apply(clean) - clean  # (n,)
            for dst in tc.dst_layers(node.layer):
                row = tc.decoder_vectors(node.layer, torch.tensor([node.feature]), dst)[0].float()
                write[dst][0, pos] += delta[:, None] * row
        else:
            ones = torch.ones(len(pos), device=local.device)
            delta = e.apply(ones) - ones
            if node.kind == "error":
                write[node.layer][0, pos] += delta[:, None] * local.errors[node.layer, pos]
            else:
                embed[0, pos] += delta[:, None] * local.embeddings[pos].float()
    clean = frozen_forward(local)
    run = frozen_forward(local, write_extra=write, embed_extra=embed, edit=_steering(interventions))
    watched = []
    for node in watch:
        for p in node.at(P):
            label = Node(node.kind, node.layer, (p,), node.feature).label()
            if node.kind == "feature":
                before = float(clean.pre_activations[node.layer][0, p, node.feature])
                after = float(run.pre_activations[node.layer][0, p, node.feature])
                watched.append((label, before, after))
    return Outcome(
        "constrained", clean.logits[0, -1], run.logits[0, -1], watched, clean.normed[0, -1], run.normed[0, -1]
    )


def _free(
    model: Transformer,
    tc: Transcoder,
    tokens: Tensor,
    interventions: Interventions,
    errors: str,
    watch: Sequence[Node],
) -> Outcome:
    for e in interventions.edits:
        if e.node.kind == "error":
            raise ClewError(f"{e.node.label()}: error nodes can be edited in the constrained mode only")
    clean = ReplacementModel(model, tc).clean_run(tokens[None])  # its logits, activations and errors
    result = run_free(model, tc, tokens[None], interventions, errors, clean=clean)
    watched = []
    if watch:
        clean_acts = clean.features
        for node in watch:
            for p in node.at(len(tokens)):
                label = Node(node.kind, node.layer, (p,), node.feature).label()
                if node.kind == "feature":
                    before = float(clean_acts[node.layer][0, p, node.feature])
                    watched.append((label, before, float(result.features[node.layer][0, p, node.feature])))
    return Outcome(f"free (errors {errors})", clean.logits[0, -1], result.logits[0, -1], watched)


def run_free(
    model: Transformer,
    tc: Transcoder,
    tokens: Tensor,
    interventions: Interventions,
    errors: str = "frozen",
    frozen: Frozen | None = None,
    clean: CleanRun | None = None,
):
    """The free run of ``tokens`` (B, P) with ``interventions``: a :class:`~clew.replacement.InterventionResult`.
    ``frozen`` replays attention patterns and norm scales (of a clean run of the same tokens); ``clean``
    is that clean run's :class:`~clew.replacement.CleanRun` when the caller has it (else it is made here)."""
    feature_edits = [e for e in interventions.edits if e.node.kind == "feature"]
    embedding_edits = [e for e in interventions.edits if e.node.kind == "embedding"]

    def edit_acts(layer: int, acts: Tensor) -> Tensor:
        for e in feature_edits:
            if e.node.layer == layer:
                pos = e.node.at(acts.shape[1])
                acts[:, pos, e.node.feature] = e.apply(acts[:, pos, e.node.feature])
        return acts

    steering = _steering(interventions)

    def edit(layer: int, resid: Tensor) -> Tensor:
        if layer == 0 and embedding_edits:  # the residual entering layer 0 is the embedding
            resid = resid.clone()
            for e in embedding_edits:
                pos = e.node.at(resid.shape[1])
                ones = torch.ones(len(pos), 1, dtype=resid.dtype, device=resid.device)
                resid[:, pos] = resid[:, pos] * e.apply(ones)
        return steering(layer, resid) if steering is not None else resid

    rm = ReplacementModel(model, tc)
    return rm.intervene(
        tokens,
        freeze_errors=errors == "frozen",
        frozen=frozen,
        edit_acts=edit_acts if feature_edits else None,
        edit=edit,
        clean=clean,
    )


@torch.no_grad()
def generate(
    model: Transformer,
    transcoder: Transcoder,
    tokens: Tensor,
    interventions: Interventions,
    n_tokens: int,
    *,
    errors: str = "frozen",
    temperature: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """``n_tokens`` new tokens after ``tokens`` (P,), with the interventions applied at every step (in
    the free mode: generation runs the real model). ``temperature`` 0 is greedy; above 0, sampled with
    ``seed``. Returns the (n_tokens,) new token ids."""
    if n_tokens < 0:
        raise ClewError(f"cannot generate {n_tokens} tokens")
    if temperature < 0:
        raise ClewError(f"temperature must be 0 (greedy) or more, got {temperature}")
    tokens = tokens.flatten().to(model.embed.weight.device)
    _check(model, transcoder, interventions, (), len(tokens))
    gen = torch.Generator().manual_seed(seed)
    out = tokens
    for _ in range(n_tokens):
        if len(out) >= model.cfg.n_ctx:
            break
        logits = run_free(model, transcoder, out[None], interventions, errors).logits[0, -1].float()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits.cpu() / temperature, -1), 1, generator=gen))
        out = torch.cat([out, torch.tensor([nxt], device=out.device)])
    return out[len(tokens) :]

"""The replacement model: the model with its MLPs replaced by a transcoder, live (nothing frozen).

It relies on the model core's interface: ``model.run(tokens, *, record=False, mlp=None, frozen=None)``
returns an object with ``.logits`` ``[B, P, V]`` and, when ``record``, an
:class:`~clew.models.ActivationCache` (read at the dictionary's hook points with ``cache.read`` and
``cache.written``). ``mlp`` is a :class:`~clew.models.MLPReplacement`; the model's own MLP branch at a
write point is ``model.mlp_branch(layer, mlp_in, write, frozen)``.

With the error terms (true MLP output minus reconstruction, from a clean run of the same tokens)
added back, the replacement reproduces the model's logits; without them it is the pure replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.dictionaries.transcoder import Transcoder
from clew.errors import ClewError
from clew.models import Frozen, ResidualEdit, Transformer
from clew.models.points import read_input

TrueMLP = Callable[[int, Tensor, Tensor], Tensor]
"""``(layer, resid_mid, mlp_in) -> [B, P, d]``: the model's own MLP branch at the transcoder's write point."""


@dataclass
class CleanRun:
    """What the transcoder sees and does on a clean run of the model (all per layer with a transcoder)."""

    logits: Tensor  # [B, P, V]
    inputs: dict[int, Tensor]  # [B, P, d] at the read point
    features: dict[int, Tensor]  # [B, P, F] activations
    outputs: dict[int, Tensor]  # [B, P, d] the true MLP output at the write point (every layer)
    reconstructions: dict[int, Tensor]  # [B, P, d] decoders + bias + skip
    errors: dict[int, Tensor]  # [B, P, d] outputs - reconstructions


@dataclass
class InterventionResult:
    logits: Tensor  # [B, P, V]
    features: dict[int, Tensor]  # [B, P, F] the activations during the intervened run (overrides included)


ActivationEdit = Callable[[int, Tensor], Tensor]
"""``(layer, acts) -> acts``: changes a layer's feature activations ``[B, P, F]`` during a run (it may
edit in place); downstream layers then see the change."""

Intervention = tuple[int, int, int, float]
"""``(layer, position, feature, new_value)``; the position may be negative (from the end)."""


class _Splice:
    """The MLP replacement handed to ``model.run``: transcoder reconstruction + skip + an error term."""

    def __init__(
        self,
        tc: Transcoder,
        *,
        errors: dict[int, Tensor],
        frozen_outputs: dict[int, Tensor],
        overrides: dict[int, list[tuple[int, int, float]]] | None = None,
        true_mlp: TrueMLP | None = None,
        edit_acts: ActivationEdit | None = None,
    ):
        self.tc = tc
        self.write = tc.cfg.write
        self.errors = errors
        self.frozen_outputs = frozen_outputs
        self.overrides = overrides or {}
        self.true_mlp = true_mlp
        self.edit_acts = edit_acts
        self.acts: dict[int, Tensor] = {}  # this run's activations, kept for later layers of a CLT
        self.clean_acts: dict[int, Tensor] = {}  # the same without overrides (live-error mode only)

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        tc = self.tc
        if layer not in tc.layers:
            if self.true_mlp is not None:
                return self.true_mlp(layer, resid_mid, mlp_in)
            return self.frozen_outputs[layer]
        x = read_input(tc.cfg.read, resid_mid, mlp_in)
        acts = tc.encode(layer, x)  # [B, P, F]
        if self.true_mlp is not None:
            self.clean_acts[layer] = acts
        if layer in self.overrides:
            acts = acts.clone()
            for pos, feature, value in self.overrides[layer]:
                acts[:, pos, feature] = value
        if self.edit_acts is not None:
            acts = self.edit_acts(layer, acts.clone())  # the clean activations stay as they were
        self.acts[layer] = acts
        if self.true_mlp is not None:  # the real MLP plus what the overrides change in the reconstruction
            delta = tc.decode(self.acts, layer) - tc.decode(self.clean_acts, layer)
            return (self.true_mlp(layer, resid_mid, mlp_in) + delta).to(resid_mid.dtype)
        out = tc.decode(self.acts, layer)
        skip = tc.skip_term(layer, x)
        if skip is not None:
            out = out + skip
        if layer in self.errors:
            out = out + self.errors[layer]
        return out.to(resid_mid.dtype)


class _Zero:
    """An MLP replacement that zero-ablates every MLP (the CE-loss score's baseline)."""

    def __init__(self, write: str):
        self.write = write

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        return torch.zeros_like(resid_mid)


class ReplacementModel:
    """``model`` with its MLPs replaced by ``transcoder`` at the transcoder's write point.

    ``true_mlp`` (optional) computes the model's own MLP branch at the write point; it is needed only
    for interventions whose error terms are not frozen. When omitted, ``model.mlp_branch`` is used.
    """

    def __init__(self, model: Transformer, transcoder: Transcoder, *, true_mlp: TrueMLP | None = None):
        transcoder.check_compatible(model.cfg)
        self.model = model
        self.transcoder = transcoder
        self.true_mlp = true_mlp

    def _true_mlp(self, frozen: Frozen | None) -> TrueMLP | None:
        """The model's own MLP branch at the write point: ``true_mlp`` if given, else ``model.mlp_branch``
        (with the post-MLP norm's scale from ``frozen`` when given); None for a model without one."""
        if self.true_mlp is not None:
            return self.true_mlp
        branch = getattr(self.model, "mlp_branch", None)
        if branch is None:
            return None
        write = self.transcoder.cfg.write
        return lambda layer, resid_mid, mlp_in: branch(layer, mlp_in, write, frozen)

    @torch.no_grad()
    def clean_run(self, tokens: Tensor) -> CleanRun:
        """Run the model on ``tokens`` ``[B, P]`` and compute the transcoder's view of it."""
        tc = self.transcoder
        run = self.model.run(tokens, record=True)
        cache = run.cache
        inputs = {layer: cache.read(tc.cfg.read, layer) for layer in tc.layers}
        features = {layer: tc.encode(layer, x) for layer, x in inputs.items()}
        outputs = {layer: cache.written(tc.cfg.write, layer) for layer in range(self.model.cfg.n_layers)}
        recons, errors = {}, {}
        for layer in tc.layers:
            y = tc.decode(features, layer)
            skip = tc.skip_term(layer, inputs[layer])
            recons[layer] = y if skip is None else y + skip
            errors[layer] = outputs[layer] - recons[layer]
        return CleanRun(run.logits, inputs, features, outputs, recons, errors)

    def features(self, tokens: Tensor) -> dict[int, Tensor]:
        """Feature activations ``[B, P, F]`` per layer on a clean run of ``tokens`` ``[B, P]``."""
        return self.clean_run(tokens).features

    @torch.no_grad()
    def forward(self, tokens: Tensor, errors: bool | dict[int, bool | Tensor] = True) -> Tensor:
        """Logits ``[B, P, V]`` of the replacement model on ``tokens`` ``[B, P]``.

        ``errors=True`` adds each layer's error term from a clean run, reproducing the model's logits;
        ``False`` gives the pure replacement. A dict chooses per layer: ``True`` (the clean error), a
        ``[B, P, d]`` tensor (that error term), or ``False``; layers left out get none. Layers without
        a transcoder keep the clean run's MLP output.
        """
        needs_clean = errors is not False or self.transcoder.layers != list(range(self.model.cfg.n_layers))
        clean = self.clean_run(tokens) if needs_clean else None
        if errors is True:
            assert clean is not None
            terms = clean.errors
        elif errors is False:
            terms = {}
        else:
            assert clean is not None
            terms = {}
            for layer, value in errors.items():
                if isinstance(value, Tensor):
                    terms[layer] = value
                elif value:
                    terms[layer] = clean.errors[self._check_layer(layer)]
        frozen_outputs = clean.outputs if clean is not None else {}
        splice = _Splice(self.transcoder, errors=terms, frozen_outputs=frozen_outputs)
        return self.model.run(tokens, mlp=splice).logits

    __call__ = forward

    @torch.no_grad()
    def intervene(
        self,
        tokens: Tensor,
        interventions: Sequence[Intervention] = (),
        *,
        freeze_errors: bool = True,
        frozen: Frozen | None = None,
        edit_acts: ActivationEdit | None = None,
        edit: ResidualEdit | None = None,
        clean: CleanRun | None = None,
    ) -> InterventionResult:
        """Run with some feature activations set to new values (in every sequence of the batch).

        ``freeze_errors=True``: the replacement model with each error term fixed at its clean-run value;
        downstream features respond through their encoders. ``False``: the real model (its own MLPs,
        so the errors move with the inputs) plus, at each layer, the change the overrides make to the
        transcoder's reconstruction there. ``edit_acts`` changes any layer's activations after the
        ``interventions``; ``edit`` changes the residual stream entering each block (steering).
        ``frozen`` is passed on to ``model.run``. ``clean``: :meth:`clean_run` of these tokens, when the
        caller has it already.
        """
        clean = clean if clean is not None else self.clean_run(tokens)
        overrides = self._overrides(interventions, tokens.shape[-1])
        true_mlp = None
        if not freeze_errors:
            true_mlp = self._true_mlp(frozen)
            if true_mlp is None:
                raise ClewError(
                    "intervene(freeze_errors=False) needs the model's own MLP: pass true_mlp= to "
                    "ReplacementModel or use a model with mlp_branch()"
                )
        splice = _Splice(
            self.transcoder,
            errors=clean.errors if freeze_errors else {},
            frozen_outputs=clean.outputs,
            overrides=overrides,
            true_mlp=true_mlp,
            edit_acts=edit_acts,
        )
        kwargs = {"frozen": frozen} if frozen is not None else {}
        if edit is not None:
            kwargs["edit"] = edit
        logits = self.model.run(tokens, mlp=splice, **kwargs).logits
        return InterventionResult(logits=logits, features=splice.acts)

    @torch.no_grad()
    def ce_loss_score(self, tokens: Tensor) -> dict[str, float]:
        """Next-token cross-entropy of the model (``clean``), the pure replacement (``spliced``) and the
        model with every MLP zero-ablated (``ablated``), and ``score = (ablated - spliced) / (ablated -
        clean)``. Only meaningful when the transcoder covers every layer."""
        clean = _next_token_ce(self.model.run(tokens).logits, tokens)
        spliced = _next_token_ce(self.forward(tokens, errors=False), tokens)
        ablated = _next_token_ce(self.model.run(tokens, mlp=_Zero(self.transcoder.cfg.write)).logits, tokens)
        score = (ablated - spliced) / (ablated - clean) if ablated != clean else float("nan")
        return {"clean": clean, "spliced": spliced, "ablated": ablated, "score": score}

    def _check_layer(self, layer: int) -> int:
        self.transcoder.slot(layer)
        return layer

    def _overrides(self, interventions: Sequence[Intervention], n_pos: int) -> dict[int, list]:
        out: dict[int, list[tuple[int, int, float]]] = {}
        F = self.transcoder.cfg.n_features
        for layer, pos, feature, value in interventions:
            self._check_layer(layer)
            if not -n_pos <= pos < n_pos:
                raise ClewError(f"intervention at position {pos}: the prompt has {n_pos} tokens")
            if not 0 <= feature < F:
                raise ClewError(f"intervention on feature {feature}: layer {layer} has {F} features")
            out.setdefault(layer, []).append((pos, feature, float(value)))
        return out


def _next_token_ce(logits: Tensor, tokens: Tensor) -> float:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``."""
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1)
    ).item()

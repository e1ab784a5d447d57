"""The frozen local replacement model run forwards: direct effects, measured rather than transposed.

Attention patterns and normalisation scales are replayed from the clean run, every feature's
activation and every error vector is held at its clean value (the MLPs return constants, plus the
dictionary's skip path, which stays live because it is linear), and any vector can be added at a
layer's write point or to the residual stream. Everything is then linear in what is added, so the
change of any target (a feature's pre-activation, a logit) is the sum of the direct effects of the
additions: exactly what the attribution graph's edges claim. Verification of edges, constrained
interventions and steering in the frozen model all run through :func:`frozen_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clew.models import ResidualEdit
from clew.models.points import read_input
from clew.replacement.local import LocalReplacement


class _FrozenMLPs:
    """MLPs replaced by the clean reconstruction and error (constants, scaled by ``scale``) and the live
    skip path, plus ``extra[layer]`` (B, P, D) at the write point; records the features' pre-activations."""

    def __init__(self, local: LocalReplacement, extra: dict[int, Tensor], scale: float):
        self.local, self.extra = local, extra
        self.write = local.tc.cfg.write
        self.pre: dict[int, Tensor] = {}
        tc = local.tc
        self.constant = {
            layer: scale * (tc.decode(local.acts, layer) - tc.decoder_bias(layer) + local.errors[layer])
            + tc.decoder_bias(layer)
            for layer in range(local.n_layers)
        }

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        tc = self.local.tc
        read = read_input(tc.cfg.read, resid_mid, mlp_in)
        self.pre[layer] = tc.pre_activations(layer, read)
        out = self.constant[layer].expand_as(resid_mid)
        skip = tc.skip_term(layer, read)
        if skip is not None:
            out = out + skip
        if layer in self.extra:
            out = out + self.extra[layer]
        return out


@dataclass
class FrozenRun:
    """What a forward pass of the frozen local replacement model gives."""

    logits: Tensor
    """(B, P, V) the logits (through the frozen final norm; any final soft-capping applied)."""
    normed: Tensor
    """(B, P, D) the final norm's output, where logit directions are read."""
    pre_activations: dict[int, Tensor]
    """Per layer, (B, P, F) every feature's pre-activation (the activations themselves stay frozen)."""


@torch.no_grad()
def frozen_forward(
    local: LocalReplacement,
    *,
    batch: int = 1,
    write_extra: dict[int, Tensor] | None = None,
    embed_extra: Tensor | None = None,
    edit: ResidualEdit | None = None,
    scale_sources: float = 1.0,
) -> FrozenRun:
    """Run the frozen local replacement model: ``write_extra[layer]`` (B, P, D) is added at each layer's
    write point, ``embed_extra`` (B, P, D) to the embeddings, ``edit`` may change the residual stream
    entering each block; ``scale_sources`` scales every source (embeddings, features' writes, errors),
    so 0 leaves only the biases."""
    model, cache = local.model, local.cache
    B = batch if embed_extra is None else len(embed_extra)
    resid = scale_sources * local.embeddings[None].expand(B, -1, -1)
    if embed_extra is not None:
        resid = resid + embed_extra
    mlps = _FrozenMLPs(local, write_extra or {}, scale_sources)
    final = model.run_layers(resid, 0, local.n_layers, frozen=cache.frozen(), mlp=mlps, edit=edit)
    normed = model.ln_final(final, cache.scales["final"])
    logits = model.unembed(normed)
    if model.cfg.final_softcap is not None:
        logits = torch.tanh(logits / model.cfg.final_softcap) * model.cfg.final_softcap
    return FrozenRun(logits, normed, mlps.pre)

"""A dictionary's encoders run on contexts: what it reads at its layers, and its features' activations.

Only the encoders: the model runs up to the last layer the dictionary reads (or the last one asked
for) and no further, and the decoders are never touched. ``Transcoder.encode`` applies the
nonlinearity in place on the pre-activations, so a layer holds one ``[B, P, F]`` tensor, not two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.models import Transformer
from clew.models.capture import capture


def dictionary_inputs(
    model: Transformer, tc: Transcoder, tokens: Tensor, layers: list[int] | None = None
) -> dict[int, Tensor]:
    """layer -> ``[B, P, d]``: what the dictionary reads at each of its ``layers`` (all when None), on
    ``tokens`` ``[B, P]``; the model runs no further than the last of them."""
    inputs, _ = capture(model, tokens, list(tc.layers) if layers is None else layers, tc.cfg.read)
    return inputs


@torch.inference_mode()
def feature_activations(
    model: Transformer, tc: Transcoder, tokens: Tensor, up_to: int | None = None
) -> dict[int, Tensor]:
    """layer -> ``[B, P, F]`` activations of every feature on ``tokens`` ``[B, P]`` (encoders only), at
    the dictionary's layers up to ``up_to`` (all when None): the model runs no further."""
    layers = [layer for layer in tc.layers if up_to is None or layer <= up_to]
    if not layers:
        return {}
    inputs = dictionary_inputs(model, tc, tokens, layers)
    return {layer: tc.encode(layer, inputs[layer]).float() for layer in layers}


def encode_active(tc: Transcoder, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """``tc.encode`` (float32) and where its result is positive, ``[B, P, F]`` each, with one
    comparison for the two when the nonlinearity is a threshold of no negative value (a NaN
    pre-activation then counts as inactive, as the store always counted it)."""
    thr = tc.active_threshold(layer)
    if thr is not None and bool((thr >= 0).all()):
        pre = tc.pre_activations(layer, x).float()
        active = pre > thr.float()
        return pre.masked_fill_(~active, 0.0), active
    acts = tc.encode(layer, x).float()
    return acts, acts > 0

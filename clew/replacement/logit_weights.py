"""A feature's direct effect on the logits from the weights alone, with no prompt: what its labels
("the tokens it promotes") and the feature store's logit effects are read from.

One unit of a feature adds its decoder vectors to every layer it writes to; what reaches the final
residual stream is their sum (each through that layer's post-MLP norm weight when the dictionary
writes before that norm, as Gemma-2/3 ``mlp_out`` dictionaries do). The final norm's weight then
applies, and the unembedding gives logits. The norms' per-token scales are left out: they belong to a
prompt, and within one prompt the attribution graph's edges to the logits include them exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.models import Transformer
from clew.models.points import write_point


@torch.no_grad()
def logit_weights(model: Transformer, tc: Transcoder, layer: int, idx: Tensor | None = None) -> Tensor:
    """``[n, d]`` float32, on the model's device: for features ``idx`` of ``layer`` (all when None),
    what one unit of each adds to the final residual stream, times the final norm's weight. Multiply
    by the unembedding's transpose for their direct logit effects."""
    device = model.unembed.weight.device
    total: Tensor | None = None
    for dst in tc.dst_layers(layer):
        w = (tc.decoder_weights(layer, dst) if idx is None else tc.decoder_vectors(layer, idx, dst)).to(
            device
        )
        w = w.float()
        post = model.blocks[dst].mlp_post
        if post is not None and write_point(tc.cfg.write).norm is not None:  # written before that norm
            w = w * (post.weight.float() + post.offset)
        total = w if total is None else total + w
    assert total is not None, f"features of layer {layer} write nowhere"
    return total * (model.ln_final.weight.float() + model.ln_final.offset)

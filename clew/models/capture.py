"""What a dictionary reads (and what the MLP it replaces writes) at some layers, from a forward pass
that goes no deeper than the last of them.

Feature collection and naming need the read points only (to run the encoders); training needs the
MLP's own output at the write point too (the target the dictionary learns). Both come from here.
"""

from __future__ import annotations

from torch import Tensor

from clew.models.points import read_input
from clew.models.transformer import Transformer


class _Capture:
    """An MLP replacement that runs the model's own MLP and keeps, at the layers asked for, the read
    point's input and (when ``write`` is given) the MLP's output at that write point."""

    def __init__(self, model: Transformer, layers: list[int], read: str, write: str | None):
        self.model, self.layers, self.read = model, set(layers), read
        self.keep = write is not None
        self.write = write or "resid_delta"  # where the block takes this MLP's output (the protocol's field)
        self.last = max(layers)
        self.inputs: dict[int, Tensor] = {}
        self.outputs: dict[int, Tensor] = {}

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        if layer in self.layers:
            self.inputs[layer] = read_input(self.read, resid_mid, mlp_in)
        if layer == self.last and not self.keep:
            return mlp_in.new_zeros(()).expand_as(resid_mid)  # nothing reads the last block's output
        out = self.model.mlp_branch(layer, mlp_in, self.write)
        if layer in self.layers and self.keep:
            self.outputs[layer] = out
        return out


def capture(
    model: Transformer, tokens: Tensor, layers: list[int], read: str, write: str | None = None
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Run ``model`` on ``tokens`` ``[B, P]`` through the last of ``layers`` and no further; answers
    layer -> ``[B, P, d]`` the input at read point ``read``, and layer -> the model's MLP output at
    write point ``write`` (empty when ``write`` is None: then the last layer's MLP is not run)."""
    if not layers:
        return {}, {}
    hook = _Capture(model, layers, read, write)
    model.run_layers(model.embed_tokens(tokens), 0, hook.last + 1, mlp=hook)
    return hook.inputs, hook.outputs

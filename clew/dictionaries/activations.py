"""The dictionaries' nonlinearities, and the names the public tools give them.

Every function maps pre-activations ``pre`` of shape ``[..., F]`` to activations of the same shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clew.errors import ClewError

ACTIVATIONS = ("relu", "jumprelu", "topk", "batchtopk")
"""clew's names for the supported nonlinearities."""

_ALIASES = {
    "relu": "relu",
    "standard": "relu",  # SAELens' name for a plain ReLU dictionary
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "batchtopk",
}


def canonical_activation(name: object, where: str) -> str:
    """clew's name for an activation as a tool spells it (``"jump_relu"``, ``"JumpReLU"``, ``"top_k"``...).

    ``where`` names the file and field for the error message.
    """
    key = str(name).lower().replace("_", "").replace("-", "").replace(" ", "")
    if key not in _ALIASES:
        raise ClewError(f"{where}: unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return _ALIASES[key]


def relu(pre: Tensor) -> Tensor:
    """``max(pre, 0)``; ``[..., F] -> [..., F]``."""
    return torch.relu(pre)


def jumprelu(pre: Tensor, threshold: Tensor) -> Tensor:
    """``pre * (pre > threshold)``, the threshold per feature (``[F]``) or one for all (a scalar)."""
    return pre * (pre > threshold).to(pre.dtype)


def topk(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of ``relu(pre)`` along the last axis, zero the rest."""
    acts = torch.relu(pre)
    if k >= acts.shape[-1]:
        return acts
    values, indices = acts.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter_(-1, indices, values)

"""A model and a dictionary together: the replacement model, live or frozen for one prompt.

- :class:`ReplacementModel`: the model with its MLPs replaced by a dictionary, with or without
  error terms; interventions on feature activations; the CE-loss score.
- :class:`LocalReplacement`: the replacement model of one prompt, frozen at its clean run (attention
  patterns, normalisation scales, feature activations, error vectors), so that everything between
  nodes is linear; its nodes (:class:`NodeLayout`) and targets (:class:`Targets`).
- :func:`frozen_forward`: the frozen local replacement model run forwards, with additions at write
  points or in the residual stream (direct effects measured: verification, constrained interventions).
- :class:`Backward`: the transposes of the frozen model's linear pieces (norms, attention, skip path,
  hook points, the contraction into adjacency rows), which attribution and its kin are built from.
"""

from clew.replacement.backward import Backward, LayerWeights, WriteSources, norm_transpose
from clew.replacement.frozen import FrozenRun, frozen_forward
from clew.replacement.layout import NODE_KINDS, NodeLayout
from clew.replacement.local import LocalReplacement, Targets
from clew.replacement.model import CleanRun, InterventionResult, ReplacementModel

__all__ = [
    "NODE_KINDS",
    "Backward",
    "CleanRun",
    "FrozenRun",
    "InterventionResult",
    "LayerWeights",
    "LocalReplacement",
    "NodeLayout",
    "ReplacementModel",
    "Targets",
    "WriteSources",
    "frozen_forward",
    "norm_transpose",
]

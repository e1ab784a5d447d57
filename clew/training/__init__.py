"""Training transcoders: per-layer, skip and cross-layer, by Anthropic's or sparsify's recipe.

- :class:`TrainConfig`: every setting, each documented (``clew train`` is generated from it).
- :func:`train` / :class:`Trainer`: the loop, with checkpoints that resume exactly and
  DistributedDataParallel under ``torchrun``.
- :func:`evaluate` / :class:`Metrics`: L0, FVU, dead fraction and the CE-loss score.
"""

from clew.training.config import TrainConfig
from clew.training.metrics import LayerMetrics, Metrics, evaluate
from clew.training.trainer import Trainer, TrainResult, train

__all__ = ["LayerMetrics", "Metrics", "TrainConfig", "TrainResult", "Trainer", "evaluate", "train"]

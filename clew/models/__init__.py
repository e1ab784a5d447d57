"""The model core: one transformer implementation, configured per family, loaded offline."""

from clew.models.config import ModelConfig
from clew.models.loading import load_model
from clew.models.transformer import (
    ActivationCache,
    Frozen,
    MLPReplacement,
    Patterns,
    ResidualEdit,
    RunResult,
    Transformer,
)

__all__ = [
    "ActivationCache",
    "Frozen",
    "MLPReplacement",
    "ModelConfig",
    "Patterns",
    "ResidualEdit",
    "RunResult",
    "Transformer",
    "load_model",
]

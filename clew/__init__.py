"""clew: circuit tracing for transformer language models.

Follow the thread of computation from a prompt's tokens to the model's answer: swap each MLP for a
sparse dictionary, freeze what is nonlinear, and compute the exact direct effect of every node on
every other.

The names below are loaded on first use, so that importing one part of clew (``clew.errors``,
``clew.assets``) does not import the model core and torch with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Transformer", "__version__", "load_model"]

if TYPE_CHECKING:
    from clew.models import ModelConfig, Transformer, load_model


def __getattr__(name: str) -> Any:
    if name in ("ModelConfig", "Transformer", "load_model"):
        import clew.models

        return getattr(clew.models, name)
    raise AttributeError(f"module 'clew' has no attribute {name!r}")

"""clew: circuit tracing for transformer language models.

Follow the thread of computation from a prompt's tokens to the model's answer: swap each MLP for a
sparse dictionary, freeze what is nonlinear, and compute the exact direct effect of every node on
every other.
"""

from clew.models import ModelConfig, Transformer, load_model

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Transformer", "__version__", "load_model"]

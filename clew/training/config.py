"""The training configuration: one dataclass, each field documented by the string literal beneath it.

Those docstrings are read back with :func:`field_docs` and become the ``clew train`` options' help, so
the code, the documentation and the command line cannot drift apart.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

from clew.errors import ClewError
from clew.models.points import READ_POINTS, WRITE_POINTS

TRAIN_KINDS = ("plt", "clt", "skip")
ACTIVATIONS = ("jumprelu", "topk", "batchtopk", "relu")


@dataclass
class TrainConfig:
    model: str
    """The model: a local Hugging Face folder, a ``.gguf`` file, a hub id or a built-in name."""
    data: str
    """The text: a .txt, .jsonl or .parquet file, a folder of them, or a Hugging Face dataset name."""
    out: str = "transcoder"
    """Folder for the trained transcoder (circuit-tracer layout), ``checkpoint.pt`` and ``metrics.json``."""

    # ----- the dictionary ---------------------------------------------------------------------------
    kind: str = "plt"
    """``plt`` (per-layer transcoder), ``skip`` (per-layer with a dense skip path) or ``clt`` (cross-layer)."""
    activation: str = "jumprelu"
    """``jumprelu`` (Anthropic's recipe: tanh sparsity penalty), ``topk`` or ``batchtopk`` (sparsify's
    recipe: FVU loss at a fixed k), or ``relu`` (the tanh penalty on a plain ReLU)."""
    k: int = 32
    """Active features per token and layer for ``topk`` and ``batchtopk``."""
    expansion: int = 32
    """Features per layer as a multiple of d_model (ignored when ``n_features`` is given)."""
    n_features: int | None = None
    """Features per layer."""
    layers: list[int] | None = None
    """The model layers to train a transcoder for (default: all)."""
    read: str = "mlp_in"
    """Where the encoders read: ``mlp_in`` (the MLP's normalised input) or ``resid_mid``."""
    write: str = "mlp_out"
    """Where the decoders write: ``mlp_out`` (the MLP module's output) or ``resid_delta`` (after any
    post-MLP norm)."""

    # ----- data -------------------------------------------------------------------------------------
    text_field: str = "text"
    """The text column of .jsonl, .parquet and Hugging Face datasets."""
    split: str = "train"
    """The split of a Hugging Face dataset."""
    ctx_len: int = 128
    """Tokens per context (the beginning-of-sequence token included)."""
    batch_size: int = 4096
    """Tokens per optimiser step, over all processes."""
    buffer_tokens: int = 65536
    """Tokens in the shuffling buffer, over all processes: activations of this many tokens are
    computed, shuffled and served as batches before the next are computed."""
    data_shards: int = 8
    """The data is read as this many interleaved shards (document i goes to shard i mod data_shards);
    each process reads its own shards. The number of processes must divide it; runs with any such
    number of processes see the same batches."""
    model_batch: int = 16
    """Contexts per forward pass of the model while computing activations."""
    skip_bos: bool = True
    """Leave out the position of the beginning-of-sequence token (an outlier) from training and
    evaluation."""

    # ----- optimisation -----------------------------------------------------------------------------
    steps: int = 1000
    """Optimiser steps."""
    lr: float | None = None
    """Adam's learning rate; default ``2e-4 / sqrt(n_features / 16384)``."""
    lr_warmup: float = 0.01
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay: float = 0.2
    """Fraction of the steps, at the end, over which the learning rate falls linearly to 0."""
    seed: int = 0
    """Seed of the initialisation and of the shuffling: the same seed gives the same transcoder."""
    normalize: bool = True
    """Scale inputs and targets by a constant per layer so that their mean squared norm is 1 (estimated
    on the first buffer); the constants are folded into the saved weights and recorded in its config."""

    # ----- Anthropic's recipe (jumprelu, relu) ------------------------------------------------------
    sparsity: float = 0.01
    """lambda of the sparsity penalty ``lambda * sum_f tanh(c * |W_dec,f| * a_f)`` (mean over tokens,
    summed over layers; ``|W_dec,f|`` is the norm over every layer the feature writes to). It sets the
    L0: on SmolLM2-135M's layer 3 with 2,304 features, 0.005 gave an L0 of 147 and 0.02 of 37."""
    sparsity_c: float = 10.0
    """``c`` inside the tanh: with targets of unit mean squared norm a feature's contribution
    ``|W_dec,f| * a_f`` is typically 0.05-0.3, so 10 puts the tanh in its bend (an L0-like penalty)."""
    sparsity_warmup: float = 1.0
    """Fraction of the steps over which lambda rises linearly from 0 to its value."""
    preact_penalty: float = 3e-6
    """Coefficient of ``sum_f relu(threshold_f - pre_f)`` (mean over tokens): pushes up features that do
    not fire so they cannot die (threshold 0 for relu)."""
    threshold_init: float | None = None
    """Initial JumpReLU threshold (normalised units); default ``1 / sqrt(d_model)``, about one standard
    deviation of the initial pre-activations (unit encoder rows on inputs of unit mean squared norm)."""
    bandwidth: float = 0.01
    """Width of the rectangle kernel of the threshold's straight-through pseudo-derivative."""

    # ----- sparsify's recipe (topk, batchtopk) ------------------------------------------------------
    auxk_alpha: float = 0.0
    """Weight of the auxiliary loss that makes dead features reconstruct the residual error (0: off)."""
    dead_tokens: int = 1_000_000
    """A feature that has not fired for this many tokens counts as dead."""

    # ----- running ----------------------------------------------------------------------------------
    checkpoint_every: int = 500
    """Save ``checkpoint.pt`` every this many steps (0: only at the end)."""
    resume: bool = False
    """Continue from ``checkpoint.pt`` in ``out`` if there is one."""
    eval_contexts: int = 32
    """Contexts (read after the training data) for the final evaluation; 0 skips it."""
    eval_per_layer: bool = True
    """In the evaluation, also splice and ablate each layer alone for per-layer CE scores (two more forward
    passes per layer)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``...; default CUDA when present (under torchrun, the local rank's GPU)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ClewError(f"training config: {problem}")

    def problem(self) -> str | None:
        """What is wrong with the configuration, as a phrase naming the field; ``None`` if nothing."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                return f"{f.name} must be a finite number, got {value}"
        if self.lr is not None and self.lr <= 0:
            return f"lr must be positive, got {self.lr}"
        if self.kind not in TRAIN_KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(TRAIN_KINDS)}"
        if self.activation not in ACTIVATIONS:
            return f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
        if self.read not in READ_POINTS:
            return f"read {self.read!r} is not one of {', '.join(READ_POINTS)}"
        if self.write not in WRITE_POINTS:
            return f"write {self.write!r} is not one of {', '.join(WRITE_POINTS)}"
        positive = ("k", "expansion", "ctx_len", "batch_size", "buffer_tokens", "data_shards", "model_batch")
        for name in positive:
            if getattr(self, name) < 1:
                return f"{name} must be positive, got {getattr(self, name)}"
        if self.ctx_len < 2:
            return "ctx_len must be at least 2"
        if self.n_features is not None and self.n_features < 1:
            return f"n_features must be positive, got {self.n_features}"
        if self.steps < 0:
            return f"steps must not be negative, got {self.steps}"
        if self.batch_size % self.data_shards:
            return f"batch_size {self.batch_size} is not a multiple of data_shards {self.data_shards}"
        if self.buffer_tokens < self.batch_size:
            return f"buffer_tokens {self.buffer_tokens} is smaller than batch_size {self.batch_size}"
        for name in ("lr_warmup", "lr_decay", "sparsity_warmup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                return f"{name} must lie in [0, 1], got {getattr(self, name)}"
        if self.lr_warmup + self.lr_decay > 1.0:
            return "lr_warmup + lr_decay must not exceed 1"
        if self.bandwidth <= 0 or (self.threshold_init is not None and self.threshold_init <= 0):
            return "bandwidth and threshold_init must be positive"
        return None

    def features_for(self, d_model: int) -> int:
        """Features per layer for a model of width ``d_model``."""
        return self.n_features if self.n_features is not None else self.expansion * d_model

    def learning_rate(self, n_features: int) -> float:
        """The configured learning rate, or the default that shrinks with the dictionary's size."""
        return self.lr if self.lr is not None else 2e-4 / (n_features / 2**14) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ClewError(f"training config: unknown fields {', '.join(unknown)}")
        return cls(**d)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right after it), whitespace collapsed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs

"""The settings of a feature-store collection: :class:`CollectConfig`, its checks, and which of its
fields change the result (those are recorded in the store and must match when a run resumes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from clew.errors import ClewError


@dataclass
class CollectConfig:
    """How a feature store is collected. Fields that change the result are recorded in the store and
    must match when a collection is resumed."""

    ctx_len: int = 128
    """Longest context (tokens, BOS included); longer documents are cut into several contexts."""
    n_top: int = 10
    """Top-activating contexts kept per feature (one example per context)."""
    n_random: int = 12
    """Non-zero activations kept per feature as a uniform sample (the quantile and random examples)."""
    before: int = 16
    """Tokens shown before an example's peak (fewer at the start of a document)."""
    after: int = 3
    """Tokens shown after an example's peak."""
    n_logits: int = 10
    """Top and bottom logit effects kept per feature."""
    hist_bins: int = 96
    """Log-spaced histogram bins between ``hist_lo`` and ``hist_hi`` (values outside fall in the end bins)."""
    hist_lo: float = 1e-3
    """Lower edge of the histogram (activation units)."""
    hist_hi: float = 1e3
    """Upper edge of the histogram."""
    docs_per_block: int = 4096
    """Documents read, batched and checkpointed together. Larger blocks give batches of more even
    lengths (on the organism's corpus: 1.7% padding at 4,096 against 11% at 256, and batches three
    times fuller, 10-15% fewer CPU-seconds a token), at the cost of holding a block's token ids in memory
    and redoing at most one block after a kill."""
    max_docs: int | None = None
    """Stop after this many documents (``None``: the whole corpus)."""
    seed: int = 0
    """Seed of the random sample's priorities."""
    batch_tokens: int | None = None
    """Tokens per forward pass, padding included (default: 4,096 on a CPU, 32,768 on CUDA). It does not
    change the result beyond float rounding of batched products, but it is recorded."""
    checkpoint_seconds: float = 60.0
    """Write the state into the store at most this often (and at the end)."""
    threads: int | None = None
    """CPU threads (default: every core); ignored on CUDA. With more than one, that many batches run
    their forward passes at once, each on one thread: a small model's many small operations then never
    wait for each other's threads (two threads inside every operation were four times slower than one
    on a loaded two-core machine). The state is still updated batch by batch, in order."""
    device: str | None = None
    """``cpu`` or ``cuda`` (default: CUDA when present)."""
    progress: bool = True
    """Show a progress bar with tokens per second."""

    RESULT_FIELDS = (
        "ctx_len",
        "n_top",
        "n_random",
        "before",
        "after",
        "n_logits",
        "hist_bins",
        "hist_lo",
        "hist_hi",
        "docs_per_block",
        "max_docs",
        "seed",
        "batch_tokens",
    )

    def result_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RESULT_FIELDS}

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    def check(self) -> None:
        if self.ctx_len < 2:
            raise ClewError(f"ctx_len must be at least 2, got {self.ctx_len}")
        if min(self.n_top, self.n_random, self.n_logits, self.hist_bins, self.docs_per_block) < 1:
            raise ClewError("n_top, n_random, n_logits, hist_bins and docs_per_block must be positive")
        if not 0 < self.hist_lo < self.hist_hi:
            raise ClewError(f"histogram range must satisfy 0 < lo < hi, got {self.hist_lo}, {self.hist_hi}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ClewError(f"max_docs must be positive, got {self.max_docs}")


def settings_dict(cfg: CollectConfig) -> dict[str, Any]:
    return asdict(cfg)

"""Attention heads: what each head does on repeated random text, what its OV circuit copies, and what
the model loses without it.

``clew.heads.motifs`` scores every head (previous-token, duplicate-token, induction, copying);
``clew.heads.ablation`` zeroes heads inside a context manager and measures in-context copying.
How a graph edge splits across heads is in ``clew.attribution.heads_split``.
"""

from clew.heads.ablation import Ablation, Copying, ablate_heads, ablation_effect, copying_accuracy, parse_head
from clew.heads.motifs import (
    SCORES,
    HeadScores,
    RepeatedSequences,
    TextSequences,
    copying_scores,
    pattern_scores,
    repeated_sequences,
    score_heads,
    text_sequences,
    write_heatmaps,
)

__all__ = [
    "SCORES",
    "Ablation",
    "Copying",
    "HeadScores",
    "RepeatedSequences",
    "TextSequences",
    "ablate_heads",
    "ablation_effect",
    "copying_accuracy",
    "copying_scores",
    "parse_head",
    "pattern_scores",
    "repeated_sequences",
    "score_heads",
    "text_sequences",
    "write_heatmaps",
]

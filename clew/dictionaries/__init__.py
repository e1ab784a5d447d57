"""Replacement dictionaries: per-layer, skip and cross-layer transcoders, read from every common layout.

- :class:`Transcoder` and :class:`TranscoderConfig`: the one dictionary class and its configuration.
- :func:`load_transcoder` / :func:`save_transcoder`: any known layout in, circuit-tracer's layout out.
- :class:`ReplacementModel`: the model with its MLPs replaced, with or without error terms.
"""

from clew.dictionaries.formats import load_transcoder, save_transcoder
from clew.dictionaries.replacement import CleanRun, InterventionResult, ReplacementModel
from clew.dictionaries.transcoder import LazyDecoder, Transcoder, TranscoderConfig

__all__ = [
    "CleanRun",
    "InterventionResult",
    "LazyDecoder",
    "ReplacementModel",
    "Transcoder",
    "TranscoderConfig",
    "load_transcoder",
    "save_transcoder",
]

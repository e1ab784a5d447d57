"""Replacement dictionaries: per-layer, skip and cross-layer transcoders, read from every common layout.

- :class:`Transcoder` and :class:`TranscoderConfig`: the one dictionary class and its configuration.
- :func:`load_transcoder` / :func:`save_transcoder`: any known layout in, circuit-tracer's layout out.

A model and a dictionary together (the replacement model) live one floor up, in :mod:`clew.replacement`.
"""

from clew.dictionaries.formats import load_transcoder, save_transcoder
from clew.dictionaries.transcoder import LazyDecoder, Transcoder, TranscoderConfig

__all__ = [
    "LazyDecoder",
    "Transcoder",
    "TranscoderConfig",
    "load_transcoder",
    "save_transcoder",
]

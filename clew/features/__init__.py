"""What each feature means: the feature-examples store, its labels and the viewers' feature files.

- :func:`collect` runs a model and a dictionary's encoders over a corpus into a :class:`FeatureStore`
  (one SQLite file per dictionary): per feature its top contexts, a uniform sample of its non-zero
  activations, statistics, histogram, logit effects and an automatic label. Its parts:
  :mod:`~clew.features.config`, :mod:`~clew.features.contexts`, :mod:`~clew.features.encode` (also
  :func:`feature_activations` on any tokens), :mod:`~clew.features.state`, :mod:`~clew.features.records`.
- :mod:`clew.features.labels`: the automatic labels and the hook for a labeller of one's own.
- :mod:`clew.features.viewer`: per-feature JSON files for Neuronpedia-style viewers, and the terminal card.
"""

from __future__ import annotations

from clew.features.collect import CollectResult, collect, fingerprint
from clew.features.config import CollectConfig
from clew.features.contexts import Corpus
from clew.features.encode import feature_activations
from clew.features.store import SCHEMA_VERSION, Example, FeatureRecord, FeatureStore

__all__ = [
    "SCHEMA_VERSION",
    "CollectConfig",
    "CollectResult",
    "Corpus",
    "Example",
    "FeatureRecord",
    "FeatureStore",
    "collect",
    "feature_activations",
    "fingerprint",
]

"""A feature's card for the page, from a feature store: label, logit effects, top examples, histogram."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from clew.features import FeatureStore
from clew.features.viewer import linear_histogram

EXAMPLES = 8
"""Top activating examples sent per feature."""
LOGITS = 8
"""Top and bottom logit effects sent per feature."""


class Stores:
    """Feature stores opened once per thread (an SQLite connection stays in the thread that opened it)."""

    def __init__(self):
        self._local = threading.local()

    def get(self, path: str | Path) -> FeatureStore:
        opened = getattr(self._local, "stores", None)
        if opened is None:
            opened = self._local.stores = {}
        key = str(path)
        if key not in opened:
            opened[key] = FeatureStore.open(path)
        return opened[key]


def feature_card(store: FeatureStore, layer: int, feature: int) -> dict[str, Any]:
    """What the feature panel shows of ``layer/feature``."""
    record = store.feature(layer, feature)
    examples = []
    for e in record.of_kind("top")[:EXAMPLES]:
        examples.append(
            {
                "tokens": [store.text(t) for t in e.tokens],
                "acts": [round(a, 4) for a in e.acts],
                "peak": e.peak,
                "activation": round(e.activation, 4),
            }
        )
    return {
        "label": store.label(layer, feature),
        "frequency": record.frequency,
        "mean": round(record.mean, 4),
        "act_max": round(record.act_max, 4),
        "act_min": round(record.act_min, 4),
        "top_logits": [[store.text(t), round(v, 4)] for t, v in record.top_logits[:LOGITS]],
        "bottom_logits": [[store.text(t), round(v, 4)] for t, v in record.bottom_logits[:LOGITS]],
        "examples": examples,
        "histogram": linear_histogram(store, record),
        "store": store.path.name,
    }

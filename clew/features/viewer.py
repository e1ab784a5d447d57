"""What a store shows: per-feature JSON files for Neuronpedia-style viewers, and a feature's card in
the terminal.

Viewer files (NOTES section 4): one ``<index>.json`` per feature, where ``index`` is the Cantor pairing
of (layer, feature), the number graphs carry in each node's ``feature`` field and circuit-tracer's page
fetches as ``<scan>/<index>.json``. Each holds ``index``, ``layer``, ``feature``, ``label``,
``examples_quantiles`` (the top contexts, then the random sample split into thirds by activation: a
uniform sample of the non-zero activations, so its thirds are quantiles of the feature's
distribution), ``top_logits`` and ``bottom_logits`` (token strings), ``act_min``, ``act_max``,
``histogram`` (30 linear bins from ``act_min`` to ``act_max``, re-binned from the store's log bins: each
log bin's count goes to the linear bin holding its centre) and ``activation_frequency``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clew.errors import ClewError
from clew.features.store import Example, FeatureRecord, FeatureStore
from clew.files import write_atomic

LINEAR_BINS = 30
BARS = " ▁▂▃▄▅▆▇█"


def cantor(layer: int, feature: int) -> int:
    """The viewers' feature number: ``(x + y)(x + y + 1) / 2 + y`` of (layer, feature)."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def linear_histogram(store: FeatureStore, record: FeatureRecord, bins: int = LINEAR_BINS) -> list[int]:
    """The record's log-binned counts re-binned into ``bins`` linear bins over [act_min, act_max]."""
    edges = store.meta["hist_edges"]
    lo, hi = record.act_min, record.act_max
    out = [0] * bins
    if not record.histogram or hi <= lo:
        if record.n_active:
            out[-1] = record.n_active
        return out
    for i, count in enumerate(record.histogram):
        if not count:
            continue
        left = edges[i - 1] if i > 0 else edges[0] / 2
        right = edges[i] if i < len(edges) else edges[-1] * 2
        centre = min(max(math.sqrt(left * right), lo), hi)
        out[min(bins - 1, int((centre - lo) / (hi - lo) * bins))] += count
    return out


def _example_json(store: FeatureStore, e: Example, repeated: bool) -> dict[str, Any]:
    return {
        "tokens": [store.text(t) for t in e.tokens],
        "tokens_acts_list": [round(a, 4) for a in e.acts],
        "train_token_ind": e.peak,
        "is_repeated_datapoint": repeated,
    }


def feature_json(store: FeatureStore, record: FeatureRecord) -> dict[str, Any]:
    """The viewers' detail JSON of one feature."""
    seen: set[int] = set()
    groups = []

    def group(name: str, examples: list[Example]) -> None:
        items = []
        for e in examples:
            items.append(_example_json(store, e, e.context in seen))
            seen.add(e.context)
        if items:
            groups.append({"quantile_name": name, "examples": items})

    group("Top activations", record.of_kind("top"))
    sample = sorted(record.of_kind("random"), key=lambda e: -e.activation)
    third = math.ceil(len(sample) / 3) if sample else 0
    for i, name in enumerate(("upper", "middle", "lower")):
        group(f"Random sample, {name} third of activations", sample[i * third : (i + 1) * third])
    return {
        "index": cantor(record.layer, record.feature),
        "layer": record.layer,
        "feature": record.feature,
        "label": store.label(record.layer, record.feature),
        "examples_quantiles": groups,
        "top_logits": [store.text(t) for t, _ in record.top_logits],
        "bottom_logits": [store.text(t) for t, _ in record.bottom_logits],
        "act_min": record.act_min,
        "act_max": record.act_max,
        "histogram": linear_histogram(store, record),
        "activation_frequency": record.frequency,
    }


def export_features(
    store: FeatureStore, out_dir: str | Path, only: Iterable[tuple[int, int]] | None = None
) -> int:
    """Write ``out_dir/<index>.json`` for every feature (or those of ``only``) and ``out_dir/index.json``
    (index -> [layer, feature, label] of the files written). Returns how many were written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ClewError(f"{out}: not a folder")
    out.mkdir(parents=True, exist_ok=True)
    listing: dict[str, Any] = {}
    index_path = out / "index.json"
    if index_path.is_file():
        try:
            listing = json.loads(index_path.read_text()).get("features", {})
        except (json.JSONDecodeError, AttributeError):
            listing = {}
    records = (
        (store.feature(layer, f) for layer, f in sorted(set(only))) if only is not None else store.features()
    )
    n = 0
    for record in records:
        body = feature_json(store, record)
        write_atomic(
            out / f"{body['index']}.json", json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        )
        listing[str(body["index"])] = [record.layer, record.feature, body["label"]]
        n += 1
    meta = {
        k: store.meta.get(k) for k in ("model", "dictionary", "dictionary_fingerprint", "corpus", "n_tokens")
    }
    write_atomic(index_path, json.dumps({"store": meta, "features": listing}, ensure_ascii=False))
    return n


# ----- the terminal card ------------------------------------------------------------------------------------


def bar_line(counts: list[int]) -> str:
    """Counts as a line of block characters, the tallest a full block."""
    top = max(counts) if counts else 0
    if not top:
        return ""
    return "".join(BARS[min(len(BARS) - 1, math.ceil(c / top * (len(BARS) - 1)))] for c in counts)


def render_example(store: FeatureStore, e: Example, width: int = 100) -> str:
    """One example as text, the peak token in ⟦ ⟧ (newlines shown as ⏎)."""
    parts = []
    for i, t in enumerate(e.tokens):
        s = store.text(t).replace("\n", "⏎")
        parts.append(f"⟦{s}⟧" if i == e.peak else s)
    text = "".join(parts)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def render_card(store: FeatureStore, layer: int, feature: int, n_examples: int = 8) -> str:
    """The feature's card: label(s), statistics, histogram, logit effects, top and random examples."""
    r = store.feature(layer, feature)
    labels = store.labels(layer, feature)
    lines = [f"feature {layer}/{feature}: {store.label(layer, feature) or '(no label)'}"]
    for source, label in sorted(labels.items()):
        lines.append(f"  label [{source}]: {label}")
    if r.n_active == 0:
        lines.append(
            f"  never active in {store.meta.get('n_tokens', 0):,} tokens of {store.meta.get('corpus')}"
        )
        return "\n".join(lines)
    lines.append(
        f"  active on {r.frequency:.3%} of tokens ({r.n_active:,} of {store.meta.get('n_tokens', 0):,}); "
        f"mean {r.mean:.3g}, min {r.act_min:.3g}, max {r.act_max:.3g}"
    )
    lines.append(f"  histogram {r.act_min:.3g} |{bar_line(linear_histogram(store, r))}| {r.act_max:.3g}")
    lines.append("  promotes:   " + "  ".join(f"{store.text(t)!r} {v:+.2f}" for t, v in r.top_logits[:6]))
    lines.append("  suppresses: " + "  ".join(f"{store.text(t)!r} {v:+.2f}" for t, v in r.bottom_logits[:6]))
    lines.append("  top examples:")
    for e in r.of_kind("top")[:n_examples]:
        lines.append(f"    {e.activation:8.3f}  {render_example(store, e)}")
    sample = sorted(r.of_kind("random"), key=lambda e: -e.activation)[: max(3, n_examples // 2)]
    if sample:
        lines.append("  random non-zero examples:")
        for e in sample:
            lines.append(f"    {e.activation:8.3f}  {render_example(store, e)}")
    return "\n".join(lines)


def parse_key(text: str) -> tuple[int, int]:
    """``"L/F"`` (or ``"L F"``, ``"L:F"``, or the graphs' own ``"L1/F12"``) -> (layer, feature), or a
    one-line error."""
    for sep in ("/", ":", " ", "_"):
        if sep in text.strip():
            a, _, b = text.strip().partition(sep)
            try:
                return int(a.strip().lstrip("Ll")), int(b.strip().lstrip("Ff"))
            except ValueError:
                break
    raise ClewError(f"{text!r}: name a feature as LAYER/FEATURE, for example 3/117 or L3/F117")

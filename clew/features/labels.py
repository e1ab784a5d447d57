"""Feature labels: a short automatic one for every feature, and a hook for a labeller of one's own.

The automatic label says what a feature fires on and what it says next, from the store alone:

    Dallas/Houston → Texas/Austin

- *fires on*: the tokens at the peaks of its examples (the top contexts and the random sample), each
  counted with its activation as weight; the heaviest, up to three, those holding at least a tenth of
  the weight. When no token holds a fifth of it, the feature is about context rather than a token, and
  the label shows the token before the peak instead (``after the``).
- *context*: when the peak tokens are too common to tell (``is``, ``of``, punctuation), the word that
  at least half the top examples share before their peak comes first: ``capital…is``.
- *says*: the tokens its decoder raises most through the unembedding (its top logit effects), up to
  three, nothing when the top ten are flat (no token stands out), and only those it raises by at least :data:`SAYS_MIN` nats at its largest activation (effect
  times ``act_max``): an early feature whose direct effect on the logits is negligible says nothing,
  rather than a noisy guess.

It is deterministic: the same store gives the same labels. A labeller (``clew features label``) adds
labels under its own source name; :meth:`FeatureStore.label` prefers them to the automatic one.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from clew.errors import ClewError
from clew.features.store import FeatureRecord, FeatureStore

MAX_LEN = 60
SAYS_MIN = 0.5
"""A token is in the *says* part when the feature at its maximum raises its logit by this many nats."""


def _word(text: str) -> str:
    t = text.strip()
    return t if t else repr(text)


def fires_on(record: FeatureRecord, texts: dict[int, str], k: int = 3) -> str:
    """The tokens the feature peaks on (see the module's docstring), as ``a/b/c``."""
    weights: dict[int, float] = {}
    before: dict[int, float] = {}
    for e in record.examples:
        if not e.tokens:
            continue
        w = max(e.activation, 0.0) * (1.0 if e.kind == "top" else 0.5)
        tok = e.tokens[e.peak]
        weights[tok] = weights.get(tok, 0.0) + w
        if e.peak > 0:
            prev = e.tokens[e.peak - 1]
            before[prev] = before.get(prev, 0.0) + w
    total = sum(weights.values())
    if total <= 0:
        return ""
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    if ranked[0][1] < 0.2 * total and before:
        prev = sorted(before.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        return f"after {_word(texts.get(prev, str(prev)))}"
    chosen = [t for t, w in ranked[:k] if w >= 0.1 * total] or [ranked[0][0]]
    return "/".join(_word(texts.get(t, str(t))) for t in chosen)


def says(record: FeatureRecord, texts: dict[int, str], k: int = 3) -> str:
    """The tokens the feature's decoder raises most, as ``a/b/c`` (see :data:`SAYS_MIN`); nothing when
    the top logit effects are flat (the tenth within 3% of the first: no token stands out)."""
    top = record.top_logits
    if not top or (len(top) >= 10 and top[9][1] >= 0.97 * top[0][1]):
        return ""
    return "/".join(_word(texts.get(t, str(t))) for t, v in top[:k] if v * record.act_max >= SAYS_MIN)


STOP = {"is", "in", "of", "the", "a", "an", "to", "and", "est", "le", "la", "de", "les", "du", "'s"}
"""Peak tokens too common to say what a feature is about on their own."""


def context_word(record: FeatureRecord, texts: dict[int, str]) -> str:
    """The word that most top examples share before their peak (at least half of them), when the peak
    tokens alone are too common to tell (``is``, ``of``, punctuation); else ``""``."""
    top = [e for e in record.of_kind("top") if e.tokens]
    if not top:
        return ""
    peaks = {texts.get(e.tokens[e.peak], "").strip().lower() for e in top}
    if not all(len(p) <= 2 or p in STOP for p in peaks):
        return ""
    counts: dict[int, int] = {}
    for e in top:
        for t in set(e.tokens[: e.peak]):
            w = texts.get(t, "").strip().lower()
            if len(w) > 2 and w not in STOP and w.isalpha():
                counts[t] = counts.get(t, 0) + 1
    if not counts:
        return ""
    t, n = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return _word(texts.get(t, str(t))) if n * 2 >= len(top) else ""


def auto_label(record: FeatureRecord, texts: dict[int, str]) -> str:
    """The automatic label of one feature."""
    if record.n_active == 0:
        return "dead (never active)"
    on, out, ctx = fires_on(record, texts), says(record, texts), context_word(record, texts)
    if ctx:
        on = f"{ctx}…{on}"
    label = f"{on} → {out}" if out else on
    return label if len(label) <= MAX_LEN else label[: MAX_LEN - 1] + "…"


def auto_labels(records: Iterable[FeatureRecord], texts: dict[int, str]) -> dict[tuple[int, int], str]:
    """(layer, feature) -> automatic label, for every record."""
    return {(r.layer, r.feature): auto_label(r, texts) for r in records}


def relabel(store: FeatureStore) -> int:
    """Recompute the automatic labels of a (writable) store from its records; returns how many."""
    labels = auto_labels(store.features(), store.vocab())
    store.put_labels(labels, "auto")
    return len(labels)


# ----- labellers of one's own -------------------------------------------------------------------------------


def card(store: FeatureStore, record: FeatureRecord, n_examples: int = 5) -> dict[str, Any]:
    """What a labeller is given for one feature: its key, automatic label, top examples as text (the
    peak token in ``[[ ]]``) and the tokens it promotes and suppresses."""
    text = store.text
    examples = []
    for e in record.of_kind("top")[:n_examples]:
        parts = [text(t) if i != e.peak else f"[[{text(t)}]]" for i, t in enumerate(e.tokens)]
        examples.append({"text": "".join(parts), "activation": round(e.activation, 4)})
    return {
        "layer": record.layer,
        "feature": record.feature,
        "auto_label": store.labels(record.layer, record.feature).get("auto", ""),
        "frequency": record.frequency,
        "examples": examples,
        "promotes": [text(t) for t, _ in record.top_logits[:5]],
        "suppresses": [text(t) for t, _ in record.bottom_logits[:5]],
    }


def label_with(
    store: FeatureStore,
    labeller: Callable[[dict[str, Any]], str | None],
    source: str,
    *,
    only: Iterable[tuple[int, int]] | None = None,
) -> int:
    """Label features with a Python callable (a card -> a label, or None to skip); the labels are
    stored under ``source``. Returns how many were labelled."""
    if not source or source == "auto":
        raise ClewError("a labeller needs a source name other than 'auto'")
    wanted = set(only) if only is not None else None
    found = {}
    for record in store.features():
        if wanted is not None and (record.layer, record.feature) not in wanted:
            continue
        if record.n_active == 0:
            continue
        label = labeller(card(store, record))
        if label:
            found[(record.layer, record.feature)] = " ".join(str(label).split())[:200]
    store.put_labels(found, source)
    return len(found)


def command_labeller(command: str, timeout: float = 600.0) -> Callable[[dict[str, Any]], str | None]:
    """A labeller that runs ``command`` once per feature with the card as JSON on its standard input
    and takes the first line of its standard output as the label (for example a local language model
    behind a small script)."""
    argv = shlex.split(command)
    if not argv:
        raise ClewError("the labeller command is empty")

    def run(feature_card: dict[str, Any]) -> str | None:
        try:
            done = subprocess.run(
                argv, input=json.dumps(feature_card), capture_output=True, text=True, timeout=timeout
            )
        except FileNotFoundError:
            raise ClewError(f"labeller command {argv[0]!r}: not found") from None
        except subprocess.TimeoutExpired:
            raise ClewError(f"labeller command {argv[0]!r}: no answer in {timeout:.0f} s") from None
        if done.returncode != 0:
            err = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ClewError(f"labeller command {argv[0]!r} failed (exit {done.returncode}): {err}")
        lines = done.stdout.strip().splitlines()
        return lines[0] if lines else None

    return run

"""Names of supernodes, from what their members fire on, the context they fire in, and what they say.

A supernode's name is read from a set of example windows of the group:

- **examples**: with the model and dictionary at hand, the group's own (:mod:`clew.circuits.examples`:
  the contexts where the members fire together as they do here, each weighted by how closely they
  do); without them, each member's stored top examples, weighted by the member's influence and the
  example's activation relative to its feature's largest.
- **fires on**: the tokens at the examples' peaks, up to three holding at least a tenth of the weight
  (``Antonio/Dallas/Paso``), each with the word beside it at most of its peaks when the two read as
  one name (``San Antonio``). Without a store, the members' own labels are pooled instead (the most
  common label part, weighted by influence).
- **topic**: the word most over-represented in those example windows against the store's examples
  as a whole (a log-odds ratio, weighted by how often it occurs), when it appears in at least
  :data:`TOPIC_SHARE` of the windows and adds to the name: it is no word of what it fires on, no token of
  the prompt (which the picture shows anyway) and not the token the group says: ``(Texas)``. A word
  beside it in :data:`PHRASE_SHARE` of its occurrences joins it (``New Hampshire``). This is
  what lets a group of city features be named by the state the corpus mentions beside them (the
  organism's stores keep 8 tokens after each peak, so that "Tucson is a city in Arizona" shows the
  state).
- **says**: when at least a quarter of the group's outgoing edge flow goes straight into a logit node,
  ``say ' Austin'`` (the logit it pushes hardest, by summed direct edges), or ``not ' Austin'`` when
  the strongest push is down.

Names are deterministic. They are guesses to read, not claims; the claims are tested by
:mod:`clew.circuits.claims`.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Iterable

import torch

from clew.attribution import Analysis, Graph
from clew.circuits.examples import GroupExample, StoreContexts, group_examples
from clew.circuits.groups import Supernode
from clew.dictionaries import Transcoder
from clew.features import FeatureStore
from clew.models import Transformer

STOP = {
    "is", "in", "of", "the", "a", "an", "to", "and", "was", "that", "it", "he", "she", "on", "at", "for",
    "with", "by", "as", "est", "le", "la", "de", "les", "du", "des", "un", "une", "et", "'s", "<bos>",
}  # fmt: skip
"""Words too common to name a topic."""

TOPIC_SHARE = 0.15
"""A topic word must appear in at least this share of the (weighted) example windows. Windows of a
city's features are mostly the sentences that use the city (in the organism, the two-hop template
itself, which never names the state), so the state is in one window in five or six, not one in three
(the earlier floor, which named the state for 2 of 24 cities with the shipped CLT; see
``docs/circuits.md``)."""

SHOWN = 3
"""A group's examples kept with it (``Supernode.examples``) to show beside its name."""

SAYS_SHARE = 0.25
"""A group says a token when this share of its outgoing flow goes straight into that logit."""


def _word(text: str) -> str:
    return text.strip() or repr(text)


def _is_word(text: str) -> bool:
    w = text.strip().lower()
    return len(w) > 2 and w.isalpha() and w not in STOP


class Background:
    """How often each token appears in the example windows of a store (one count per window), from
    the top examples of every feature: the baseline a topic word must stand out from. It is counted
    from the store's contexts (:class:`~clew.circuits.examples.StoreContexts`, one pass over the store,
    which the groups' examples search too), so :meth:`of` keeps one per open store."""

    _kept: weakref.WeakKeyDictionary[FeatureStore, Background] = weakref.WeakKeyDictionary()

    def __init__(self, store: FeatureStore):
        self.texts = store.vocab()
        self.counts: Counter[int] = Counter()
        contexts = StoreContexts.of(store)
        tops = [i for i, top in enumerate(contexts.top) if top]
        for i in tops:
            self.counts.update(set(contexts.context(i)))
        self.windows = len(tops)

    @classmethod
    def of(cls, store: FeatureStore) -> Background:
        """The store's background, read once per open store (its examples do not change once collected)."""
        if store not in cls._kept:
            cls._kept[store] = cls(store)
        return cls._kept[store]

    def rate(self, token: int) -> float:
        return (self.counts[token] + 1) / (self.windows + 2)


def _pooled(weights: dict[int, float], k: int = 3) -> list[int]:
    total = sum(weights.values())
    if total <= 0:
        return []
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, w in ranked[:k] if w >= 0.1 * total] or [ranked[0][0]]


Window = tuple[float, tuple[int, ...] | list[int], int]
"""An example window a name is read from: (weight, tokens, the peak's index in them)."""


def member_windows(
    graph: Graph, members: Iterable[int], influence: torch.Tensor, store: FeatureStore
) -> list[Window]:
    """Each member's stored top examples, weighted by the member's influence and the example's
    activation relative to its feature's largest."""
    out: list[Window] = []
    for n in members:
        record = store.feature(int(graph.features[n, 0]), int(graph.features[n, 2]))
        w_node = max(float(influence[n]), 0.0)
        scale = record.act_max or 1.0
        for e in record.of_kind("top"):
            if e.tokens:
                out.append((w_node * max(e.activation, 0.0) / scale, e.tokens, e.peak))
    return out


def fires_on_and_topic(
    graph: Graph, windows: list[Window], background: Background, shown: Iterable[int] = ()
) -> tuple[str, str]:
    """The pooled peak tokens (``a/b/c``) and the topic word (or ``""``) of a group's example
    ``windows``; ``shown``: tokens the name shows anyway (the one the group says), never the topic.
    A peak token is read with the words that stand beside it in most of its occurrences at the peaks
    when they make one name with it (``Cedar Rapids``, not ``Rapids``), and none of those words can
    be the topic."""
    texts = background.texts
    peaks: dict[int, float] = {}
    counts: Counter[int] = Counter()
    n_windows = 0.0
    for w, tokens, peak in windows:
        peaks[tokens[peak]] = peaks.get(tokens[peak], 0.0) + w
        for t in set(tokens):
            counts[t] += w
        n_windows += w
    chosen = [_phrase(t, windows, texts, at_peaks=True) for t in _pooled(peaks)]
    fires = "/".join(_word(_text(p, texts)) for p in chosen)
    if n_windows <= 0:
        return fires, ""
    best, best_score = None, 0.0
    prompt = graph.tokens.tolist()
    skip = set(prompt) | {t for p in chosen for t in p} | set(shown)
    for t, w in counts.items():
        if t in skip or not _is_word(texts.get(t, "")):
            continue
        rate = w / n_windows
        if rate < TOPIC_SHARE:
            continue
        score = rate * math.log(rate / background.rate(t))
        if score > best_score + 1e-12:
            best, best_score = t, score
    if best is None or best_score <= 0.2:
        return fires, ""
    return fires, _word(_text(_phrase(best, windows, texts, skip=prompt), texts))


PHRASE_SHARE = 2 / 3
"""A neighbour joins a peak or topic word when it stands beside it in this share of its occurrences."""


def _text(tokens: list[int], texts: dict[int, str]) -> str:
    return "".join(texts.get(t, str(t)) for t in tokens)


def _phrase(
    token: int, windows: list[Window], texts: dict[int, str], skip: Iterable[int] = (), at_peaks: bool = False
) -> list[int]:
    """The token with the word that stands beside it in most of its occurrences (by weight), before
    and after, so that a name made of several tokens is read whole: ``New Hampshire``, not
    ``Hampshire``. A neighbour in ``skip`` (for a topic, the prompt's tokens) never joins;
    ``at_peaks``: only the occurrences at the windows' peaks count, and a neighbour joins only when
    the two read as one name (:func:`_one_name`), for a peak token."""
    skip = set(skip)
    left: Counter[int] = Counter()
    right: Counter[int] = Counter()
    total = 0.0
    for w, tokens, peak in windows:
        for j in [peak] if at_peaks else range(len(tokens)):
            if tokens[j] != token:
                continue
            total += w
            if j > 0:
                left[tokens[j - 1]] += w
            if j + 1 < len(tokens):
                right[tokens[j + 1]] += w
    phrase = [token]
    for side, counts in (("left", left), ("right", right)):
        if not counts or total <= 0:
            continue
        t, w = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
        pair = (t, token) if side == "left" else (token, t)
        if w < PHRASE_SHARE * total or t in skip or not _is_word(texts.get(t, "")):
            continue
        if at_peaks and not _one_name(*(texts.get(x, "") for x in pair)):
            continue
        phrase = [t, *phrase] if side == "left" else [*phrase, t]
    return phrase


def _one_name(first: str, second: str) -> bool:
    """Whether two neighbouring tokens read as one name: the second continues the first's word (no
    space before it), or both are capitalised words (``Fort Smith``; not ``containing Dallas``)."""
    return not second.startswith(" ") or (first.strip()[:1].isupper() and second.strip()[:1].isupper())


def windows_of(
    graph: Graph,
    members: list[int],
    influence: torch.Tensor,
    store: FeatureStore,
    examples: list[GroupExample] | None = None,
) -> list[Window]:
    """The windows a group's name is read from: its own ``examples`` when there are any (from
    :func:`~clew.circuits.examples.group_examples`), else its members' (module docstring)."""
    if examples:
        return [(e.score, e.tokens, e.peak) for e in examples]
    return member_windows(graph, members, influence, store)


def says(graph: Graph, analysis: Analysis, members: list[int]) -> tuple[str, int | None]:
    """``say 'token'`` (or ``not 'token'``) and the token's id when the group writes mostly straight
    into the logits (module docstring), else ``("", None)``."""
    edges = graph.adjacency.float() * analysis.pruned.edge_mask
    out = edges[:, members]  # (rows, k): the group's kept outgoing edges
    flow = out.abs().sum()
    if float(flow) <= 0:
        return "", None
    to_logits = out[graph.n_features :].sum(1)  # (T,) signed, summed over members
    if float(out[graph.n_features :].abs().sum()) < SAYS_SHARE * float(flow):
        return "", None
    j = int(to_logits.abs().argmax())
    verb = "say" if float(to_logits[j]) > 0 else "not"
    return f"{verb} {graph.logit_labels[j]!r}", int(graph.logit_tokens[j])


def name_of(
    graph: Graph,
    analysis: Analysis,
    group: Supernode,
    labels: dict[int, str] | None = None,
    store: FeatureStore | None = None,
    background: Background | None = None,
    examples: list[GroupExample] | None = None,
) -> str:
    """A short name for one supernode (module docstring), from the group's own ``examples`` when given."""
    influence = analysis.pruned.influence
    said, said_token = says(graph, analysis, group.members)
    fires, topic = "", ""
    if store is not None:
        shown = () if said_token is None else (said_token,)
        windows = windows_of(graph, group.members, influence, store, examples)
        fires, topic = fires_on_and_topic(graph, windows, background or Background.of(store), shown)
    elif labels:
        parts: dict[str, float] = {}
        for n in group.members:
            head = labels.get(n, "").split("→")[0].strip()
            if head:
                parts[head] = parts.get(head, 0.0) + max(float(influence[n]), 0.0)
        if parts:
            fires = sorted(parts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    name = fires or f"features@{group.position}"
    if topic:
        name += f" ({topic})"
    return f"{name} → {said}" if said else name


def name_supernodes(
    graph: Graph,
    analysis: Analysis,
    groups: list[Supernode],
    labels: dict[int, str] | None = None,
    store: FeatureStore | None = None,
    model: Transformer | None = None,
    transcoder: Transcoder | None = None,
) -> list[Supernode]:
    """Name every group in place (and return them); with ``model`` and ``transcoder`` (and a store),
    from the groups' own examples."""
    background = Background.of(store) if store is not None else None
    own = store is not None and model is not None and transcoder is not None
    named = [g for g in groups if g.source == "auto" or not g.name]
    # every group's contexts run as deep as the deepest group needs: once each, not once per depth
    up_to = max((int(graph.features[n, 0]) for g in named for n in g.members), default=0)
    for group in named:
        found = group_examples(model, transcoder, graph, group.members, store, up_to=up_to) if own else []
        group.examples = [e.text(store) for e in found[:SHOWN]]
        group.name = name_of(graph, analysis, group, labels, store, background, found)
    return groups

"""A supernode's own examples: the contexts where its members fire together as they do in the graph.

A group that carries something often carries it as a code. At Tucson, the organism's state is written
by features whose top examples are Mesa, Valdosta and Concord: no member means Arizona alone, and each
one's examples name other places. What the group means shows where the code recurs, that is where
the members fire together in the proportions they have here.

Candidates are the contexts of the members' stored examples (top and random: the feature store keeps
nothing else). Each is run again through the model and the dictionary as a context of its own (from
the beginning-of-sequence token when the model has one). Each position is scored by the share of the
group's pattern of activations in the graph it reproduces, a weighted Jaccard overlap:

    score = sum_i min(a_i, h_i) / sum_i max(a_i, h_i)

where ``h_i`` is member i's activation in the graph and ``a_i`` its activation at that position (0
when off). A position where every member fires as strongly as here scores 1. One where only a
member of eight fires scores about an eighth, and less when that member fires far more strongly than
here: its own top examples, where it means what it means alone, are not the group's. (The one-sided
share, ``sum_i min(a_i, h_i) / sum_i h_i``, named the Dallas group from a member's top examples of
Newport, Rhode Island.) The best position of each context is its
example; the examples are ranked by score (ties by their tokens), so they are deterministic. The
group's examples are the ten best and every other within 80% of the best score.

The members' own examples are few (about twenty a feature) and mostly where each fires strongest. So
the search takes a second step: the tokens at the peaks of the :data:`WIDEN` best examples (at a
city, the city and its neighbours) lead to every context of the store that peaks on them, whichever
feature it was kept for (up to :data:`PER_TOKEN` a token, in store order: :class:`StoreContexts`),
and those are scored the same way. At a city, these are the sentences that use the city, such as
"Tucson is a city in Arizona", which the members' own examples often lack.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.attribution import Graph
from clew.dictionaries import Transcoder
from clew.features import FeatureStore
from clew.features.encode import feature_activations
from clew.models import Transformer

N_EXAMPLES = 10
"""Examples kept per group at least: the contexts most like here."""

NEAR = 0.8
"""And beyond those, every context scoring at least this share of the best: where many contexts tie
(a layer-0 group fires alike on every use of its token), all of them, not an arbitrary ten."""

MAX_CONTEXTS = 1024
"""Candidate contexts run per group at most (the members' examples in store order, deduplicated)."""

WIDEN = 3
"""The best examples whose peak tokens lead to more candidate contexts (module docstring)."""

PER_TOKEN = 200
"""Contexts of the store taken per peak token at most, in store order."""

BATCH = 64
"""Contexts per forward pass."""

MAX_KEPT = 20_000
"""Contexts whose activations :class:`ContextActivations` keeps: sparse, about 20 KB each on the
organism (25 tokens, 4 layers, 16 features each), so 400 MB at most."""


@dataclass(frozen=True)
class GroupExample:
    """One context where the group's members fire together as they do in the graph."""

    score: float
    """How closely the members' activations at the peak match the graph's (0 to 1, module docstring)."""
    tokens: tuple[int, ...]
    """The context, as run (with the beginning-of-sequence token when the model has one)."""
    peak: int
    """The position of the best-scoring token in :attr:`tokens`."""

    def text(self, store: FeatureStore, before: int = 6, after: int = 6) -> str:
        """The example around its peak, the peak in ⟦ ⟧ and the score after it:
        ``…state containing⟦ Dallas⟧ is Austin. The… (1.00)``."""
        lo, hi = max(self.peak - before, 0), min(self.peak + after + 1, len(self.tokens))
        parts = [store.text(t).replace("\n", "⏎") for t in self.tokens[lo:hi]]
        parts[self.peak - lo] = f"⟦{parts[self.peak - lo]}⟧"
        text = ("…" if lo > 0 else "") + "".join(parts) + ("…" if hi < len(self.tokens) else "")
        return f"{text} ({self.score:.2f})"


def _from_bos(tokens: tuple[int, ...], bos: int | None) -> tuple[int, ...]:
    """A context as it is run: from ``bos`` when the model has one."""
    return (bos, *tokens) if bos is not None and tokens[0] != bos else tokens


def candidate_contexts(
    graph: Graph, members: Iterable[int], store: FeatureStore, bos: int | None
) -> list[tuple[int, ...]]:
    """The distinct contexts of the members' stored examples, each starting with ``bos`` when given."""
    seen: dict[tuple[int, ...], None] = {}
    for n in members:
        record = store.feature(int(graph.features[n, 0]), int(graph.features[n, 2]))
        for e in record.examples:
            if e.tokens:
                seen.setdefault(_from_bos(tuple(e.tokens), bos))
            if len(seen) >= MAX_CONTEXTS:
                return list(seen)
    return list(seen)


class StoreContexts:
    """Every context kept in a feature store (top and random examples of every feature, in store
    order), indexed by the token at its peak. Reading it takes a pass over the whole store, so
    :meth:`of` keeps one per open store (the names' background counts come from the same pass); the
    contexts are held in one flat tensor."""

    _kept: weakref.WeakKeyDictionary[FeatureStore, StoreContexts] = weakref.WeakKeyDictionary()

    def __init__(self, store: FeatureStore):
        flat: list[int] = []
        starts: list[int] = [0]
        self.top: list[bool] = []  # whether each context is a top example (else a random one)
        self.by_peak: dict[int, list[int]] = {}  # peak token -> context numbers, in store order
        for record in store.features():
            for e in record.examples:
                if e.tokens:
                    self.by_peak.setdefault(e.tokens[e.peak], []).append(len(self.top))
                flat.extend(e.tokens)
                starts.append(len(flat))
                self.top.append(e.kind == "top")
        self.tokens = torch.tensor(flat, dtype=torch.int32)
        self.starts = starts

    def context(self, i: int) -> tuple[int, ...]:
        """Context number ``i``."""
        return tuple(self.tokens[self.starts[i] : self.starts[i + 1]].tolist())

    @classmethod
    def of(cls, store: FeatureStore) -> StoreContexts:
        if store not in cls._kept:
            cls._kept[store] = cls(store)
        return cls._kept[store]

    def peaking_on(self, token: int, limit: int = PER_TOKEN) -> list[tuple[int, ...]]:
        """Up to ``limit`` stored contexts whose peak is ``token``, in store order."""
        return [self.context(i) for i in self.by_peak.get(token, [])[:limit]]


class ContextActivations:
    """The dictionary's activations on contexts, run once and kept sparse (a context's active features
    per layer), so that the many groups of a graph, and the graphs of one session, whose members'
    examples overlap, each run a context only once. :meth:`of` keeps one per dictionary."""

    _kept: weakref.WeakKeyDictionary[Transcoder, ContextActivations] = weakref.WeakKeyDictionary()

    def __init__(self, model: Transformer, transcoder: Transcoder):
        self.model, self.transcoder = model, transcoder
        self.bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
        # context -> layer -> (n, 3): position, feature index, activation of each active feature, at
        # the layers up to the highest one run for it
        self.kept: dict[tuple[int, ...], dict[int, Tensor]] = {}
        self.depth: dict[tuple[int, ...], int] = {}

    @classmethod
    def of(cls, model: Transformer, transcoder: Transcoder) -> ContextActivations:
        kept = cls._kept.get(transcoder)
        if kept is None or kept.model is not model:
            kept = cls._kept[transcoder] = cls(model, transcoder)
        return kept

    @torch.no_grad()
    def run(self, contexts: list[tuple[int, ...]], up_to: int) -> None:
        """Run the contexts not kept yet, or kept only below layer ``up_to``, through the model and
        the dictionary up to that layer (no further: a group's examples need its members' layers
        only). Beyond :data:`MAX_KEPT`, those used longest ago are forgotten, never one of
        ``contexts`` (at most :data:`MAX_CONTEXTS` of them)."""
        for c in contexts:  # the ones asked for again become the most recent
            if c in self.kept:
                self.kept[c] = self.kept.pop(c)
        todo = sorted({c for c in contexts if self.depth.get(c, -1) < up_to}, key=lambda c: (len(c), c))
        device = self.model.embed.weight.device
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            width = max(len(c) for c in batch)
            # padded on the right: under causal attention the padding never reaches a real position
            ids = torch.tensor([list(c) + [c[-1]] * (width - len(c)) for c in batch], device=device)
            acts = feature_activations(self.model, self.transcoder, ids, up_to)  # layer -> (B, P, F)
            for b, c in enumerate(batch):
                per_layer = {}
                for layer, a in acts.items():
                    on = a[b, : len(c)].nonzero()  # (n, 2) position, index
                    values = a[b, on[:, 0], on[:, 1]]
                    per_layer[layer] = torch.cat([on.float(), values[:, None]], 1).cpu()
                self.kept.pop(c, None)  # the most recent again
                self.kept[c], self.depth[c] = per_layer, up_to
        while len(self.kept) > MAX_KEPT:
            oldest = next(iter(self.kept))
            del self.kept[oldest], self.depth[oldest]

    def members(self, context: tuple[int, ...], layers: list[int], index: list[int]) -> Tensor:
        """(len(context), k): the activations of k features, (layers[i], index[i]), on a kept context."""
        out = torch.zeros(len(context), len(layers))
        kept = self.kept[context]
        for j, (layer, i) in enumerate(zip(layers, index)):
            rows = kept.get(layer)
            if rows is None or not len(rows):
                continue
            hit = rows[:, 1] == i
            out[rows[hit, 0].long(), j] = rows[hit, 2]
        return out


def group_examples(
    model: Transformer,
    transcoder: Transcoder,
    graph: Graph,
    members: list[int],
    store: FeatureStore,
    n: int = N_EXAMPLES,
    near: float = NEAR,
    up_to: int | None = None,
) -> list[GroupExample]:
    """The contexts where the group fires most as it does in ``graph`` (module docstring), best
    first: the ``n`` best and every other scoring at least ``near`` times the best. Contexts run up
    to layer ``up_to`` (the members' highest when None; a caller naming several groups passes their
    highest, so that each context runs once for all)."""
    here = graph.activations[members].float().clamp_min(0)
    if not members or float(here.sum()) <= 0:
        return []
    layers = graph.features[members, 0].tolist()
    index = graph.features[members, 2].tolist()
    depth = max(layers) if up_to is None else max(up_to, max(layers))
    runner = ContextActivations.of(model, transcoder)

    def scored(contexts: list[tuple[int, ...]]) -> list[GroupExample]:
        runner.run(contexts, depth)
        out = []
        for c in contexts:
            a = runner.members(c, layers, index)  # (P, k)
            score = torch.minimum(a, here).sum(-1) / torch.maximum(a, here).sum(-1)  # (P,)
            if runner.bos is not None:
                score[0] = -1.0  # the beginning-of-sequence token is nobody's example
            peak = int(score.argmax())
            out.append(GroupExample(float(score[peak]), c, peak))
        return sorted(out, key=lambda e: (-e.score, e.tokens, e.peak))

    found = scored(candidate_contexts(graph, members, store, runner.bos))
    # the second step: every stored context that peaks where the best examples do
    seen = {e.tokens for e in found}
    more: dict[tuple[int, ...], None] = {}
    for e in found[:WIDEN]:
        for c in StoreContexts.of(store).peaking_on(e.tokens[e.peak]):
            c = _from_bos(c, runner.bos)
            if c not in seen:
                more.setdefault(c)
    found = sorted(found + scored(list(more)), key=lambda e: (-e.score, e.tokens, e.peak))
    if not found or found[0].score <= 0:
        return []
    return [e for i, e in enumerate(found) if e.score > 0 and (i < n or e.score >= near * found[0].score)]

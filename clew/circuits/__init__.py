"""From graph to circuit: automatic supernodes, the circuit summary, its picture and its tested claims.

- :mod:`~clew.circuits.groups`: features grouped by position, role and contrast side (:class:`Supernode`).
- :mod:`~clew.circuits.examples`: a group's own examples, where its members fire together as here.
- :mod:`~clew.circuits.names`: each group named from its examples and what it says.
- :mod:`~clew.circuits.summary`: the supernode graph with summed exact edges, ranked paths, text.
- :mod:`~clew.circuits.picture`: the summary drawn as labelled boxes.
- :mod:`~clew.circuits.claims`: each box taken out (constrained, free, control), and the contrast swap.

:func:`find_circuit` does the first three in order and records the supernodes in the graph's annotations.
"""

from __future__ import annotations

from clew.attribution import Analysis, Graph
from clew.circuits.claims import Claim, Claims, Swap, measure_claims, measure_swap
from clew.circuits.groups import GroupingConfig, Supernode, group_features
from clew.circuits.names import name_supernodes
from clew.circuits.summary import Box, Circuit, summarize
from clew.dictionaries import Transcoder
from clew.features import FeatureStore
from clew.models import Transformer


def find_circuit(
    graph: Graph,
    analysis: Analysis,
    labels: dict[int, str] | None = None,
    store: FeatureStore | None = None,
    contrast: Graph | None = None,
    config: GroupingConfig | None = None,
    model: Transformer | None = None,
    transcoder: Transcoder | None = None,
) -> Circuit:
    """Group, name and summarise ``graph``; its supernodes are also written to
    ``graph.annotations["supernodes"]`` (replacing earlier automatic ones, keeping a user's). With the
    ``model`` and ``transcoder`` (and a store), groups are named from their own examples
    (:mod:`~clew.circuits.examples`)."""
    groups = name_supernodes(
        graph,
        analysis,
        group_features(graph, analysis, contrast, config),
        labels,
        store,
        model,
        transcoder,
    )
    kept = [s for s in graph.annotations.get("supernodes", []) if s.get("source") == "user"]
    graph.annotations["supernodes"] = kept + [s.to_json(graph) for s in groups]
    return summarize(graph, analysis, groups, labels)


__all__ = [
    "Box",
    "Circuit",
    "Claim",
    "Claims",
    "GroupingConfig",
    "Supernode",
    "Swap",
    "find_circuit",
    "group_features",
    "measure_claims",
    "measure_swap",
    "name_supernodes",
    "summarize",
]

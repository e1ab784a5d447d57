"""One analysis step: a graph and two thresholds in, its pruned view and its scores out, computed once.

Pruning and scoring read the whole adjacency (an influence pass each), so they are done here and
nowhere else; everything that shows a graph (the command line's report, the viewers' JSON, the SVG
picture, the explorer) takes an :class:`Analysis` and only writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from clew.attribution.graph import Graph
from clew.attribution.prune import Pruned, Scores, prune, scores
from clew.errors import ClewError


@dataclass
class Analysis:
    """A graph's pruned view and scores at given thresholds."""

    node_threshold: float
    """The fraction of influence the kept nodes hold."""
    edge_threshold: float
    """The fraction of edge score the kept edges hold."""
    pruned: Pruned
    """Which nodes and edges are kept, every node's influence and its cumulative fraction."""
    scores: Scores
    """Replacement and completeness of the whole graph."""
    pruned_scores: Scores
    """Replacement and completeness of the pruned graph (left-out features count as errors)."""


def analyze(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Analysis:
    """Prune ``graph`` at the thresholds and score it whole and pruned: one pruning, two scorings."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not isinstance(value, (int, float)) or not 0 < value <= 1:  # NaN fails too
            raise ClewError(f"{name} must be in (0, 1], got {value}")
    pruned = prune(graph, node_threshold, edge_threshold)
    return Analysis(
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        pruned=pruned,
        scores=scores(graph),
        pruned_scores=scores(graph, keep=pruned.node_mask),
    )

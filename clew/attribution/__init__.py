"""Attribution graphs: the engine, tracing, pruning and scores, files and exports."""

from clew.attribution.graph import Graph
from clew.attribution.prune import Pruned, Scores, prune, scores
from clew.attribution.trace import trace

__all__ = ["Graph", "Pruned", "Scores", "prune", "scores", "trace"]

"""Attribution graphs: the engine, tracing, pruning and scores, files and exports, heads as nodes."""

from clew.attribution.analysis import Analysis, analyze
from clew.attribution.export import export_json
from clew.attribution.graph import Graph
from clew.attribution.head_graph import HeadGraph, route_heads
from clew.attribution.picture import describe_path, render_svg, strongest_paths
from clew.attribution.prune import Pruned, Scores, prune, scores
from clew.attribution.trace import trace
from clew.attribution.verify import check_graph
from clew.attribution.viewer_import import import_json

__all__ = [
    "Analysis",
    "Graph",
    "HeadGraph",
    "Pruned",
    "Scores",
    "check_graph",
    "analyze",
    "describe_path",
    "export_json",
    "import_json",
    "prune",
    "render_svg",
    "route_heads",
    "scores",
    "strongest_paths",
    "trace",
]

"""Attribution graphs: the engine, tracing, pruning and scores, files and exports."""

from clew.attribution.analysis import Analysis, analyze
from clew.attribution.export import export_json, import_json
from clew.attribution.graph import Graph
from clew.attribution.picture import describe_path, render_svg, strongest_paths
from clew.attribution.prune import Pruned, Scores, prune, scores
from clew.attribution.trace import trace
from clew.attribution.verify import check_graph

__all__ = [
    "Analysis",
    "Graph",
    "Pruned",
    "Scores",
    "check_graph",
    "analyze",
    "describe_path",
    "export_json",
    "import_json",
    "prune",
    "render_svg",
    "scores",
    "strongest_paths",
    "trace",
]

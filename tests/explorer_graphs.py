"""A folder of graphs for the explorer's tests: the organism's Dallas graph (clew's file and its viewer
JSON) and a small circuit-tracer-style JSON graph; with ``contrast``, the Los Angeles graph too (for swaps)."""

from __future__ import annotations

import json
from pathlib import Path

DALLAS = "The capital of the state containing Dallas is"
LA = "The capital of the state containing Los Angeles is"


def make_folder(root: Path, contrast: bool = False) -> dict:
    """Write the graphs into ``root``; returns the model, dictionary and graph for the checks."""
    from test_export import circuit_tracer_style

    from clew.assets import ORGANISM
    from clew.attribution import analyze, export_json, trace
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, str(ORGANISM.dictionary_path("clt")), device="cpu")
    graph = trace(model, tc, DALLAS, progress=False)
    graph.save(root / "dallas.safetensors")
    export_json(graph, analyze(graph), root / "viewer", "dallas")
    (root / "ct.json").write_text(json.dumps(circuit_tracer_style()))
    made = {"model": model, "tc": tc, "graph": graph, "root": root}
    if contrast:
        made["la"] = trace(model, tc, LA, progress=False)
        made["la"].save(root / "la.safetensors")
    return made

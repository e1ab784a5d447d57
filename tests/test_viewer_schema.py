"""The viewer JSON clew writes, checked against what the viewers accept: Neuronpedia's upload schema (the
fields and types its ``graph-schema.json`` documents, written here as a JSON Schema and checked with
``jsonschema``), Neuronpedia's upload rules beyond the schema, and circuit-tracer's graph model
(``frontend/graph_models.py``: ``transcoder_list`` and all five ``qParams`` keys required, every node's
``feature`` an integer). Checked on every graph of ``clew demo`` and on a trace with a feature budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from clew.cli import main

NUMBER_OR_NULL = {"type": ["number", "null"]}
NEURONPEDIA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": "string"},
                "scan": {"type": "string"},
                "prompt": {"type": "string"},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "node_threshold": {"type": "number"},
                "feature_details": {
                    "type": "object",
                    "properties": {
                        "feature_json_base_url": {"type": "string"},
                        "neuronpedia_source_set": {"type": "string"},
                    },
                },
                "info": {
                    "type": "object",
                    "properties": {
                        "description": {"type": "string"},
                        "creator_name": {"type": "string"},
                        "creator_url": {"type": "string"},
                        "source_urls": {"type": "array"},
                        "generator": {
                            "type": "object",
                            "properties": {
                                k: {"type": "string"} for k in ("name", "version", "url", "email")
                            },
                        },
                        "create_time_ms": {"type": "number"},
                    },
                },
                "generation_settings": {
                    "type": "object",
                    "properties": {
                        "max_n_logits": {"type": "integer"},
                        "desired_logit_prob": {"type": "number"},
                        "batch_size": {"type": "integer"},
                        "max_feature_nodes": {"type": "integer"},
                    },
                },
                "pruning_settings": {
                    "type": "object",
                    "properties": {
                        "node_threshold": {"type": "number"},
                        "edge_threshold": {"type": "number"},
                    },
                },
            },
        },
        "qParams": {
            "type": "object",
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": "string"}},
                "supernodes": {"type": "array"},
                "linkType": {"type": "string"},
                "clickedId": {"type": "string"},
                "sg_pos": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp"],
                "properties": {
                    "node_id": {"type": "string"},
                    "feature": {"type": ["integer", "null"]},
                    "layer": {"type": ["string", "integer"]},
                    "ctx_idx": {"type": "integer"},
                    "feature_type": {"type": "string"},
                    "jsNodeId": {"type": "string"},
                    "clerp": {"type": "string"},
                    "influence": NUMBER_OR_NULL,
                    "activation": NUMBER_OR_NULL,
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}
"""Neuronpedia's upload schema: the documented fields, their types and what is required."""

CIRCUIT_TRACER = {
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "transcoder_list", "prompt_tokens", "prompt"],
            "properties": {
                "transcoder_list": {"type": "array", "items": {"type": "string"}},
                "node_threshold": {"type": ["number", "null"]},
                "schema_version": {"type": ["integer", "null"]},
            },
        },
        "qParams": {
            "type": "object",
            "required": ["pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"],
            "properties": {
                "supernodes": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId"],
                "properties": {
                    "feature": {"type": "integer"},
                    "layer": {"type": "string"},
                    "token_prob": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                    "clerp": {"type": "string"},
                    "influence": NUMBER_OR_NULL,
                    "activation": NUMBER_OR_NULL,
                },
            },
        },
        "links": {"type": "array", "items": {"type": "object"}},
    },
}
"""circuit-tracer's pydantic graph model, as a JSON Schema."""

UPLOAD_NAME = r"^[A-Za-z0-9_.-]+$"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[Path]]:
    """The viewer JSON of every demo graph, and of two budgeted traces (the organism; a model folder
    given by path, whose scan and names must come out as valid names, not paths)."""
    root = tmp_path_factory.mktemp("viewer")
    assert main(["demo", "--out", str(root / "demo")]) == 0
    argv = ["trace", "The capital of the state containing Dallas is", "--model", "organism", "--quiet"]
    assert main([*argv, "--max-feature-nodes", "16", "--out", str(root / "budget")]) == 0
    from clew.assets import ORGANISM

    folder = str(ORGANISM.folder)
    argv = ["trace", "The capital of France is", "-m", folder, "-d", f"{folder}/clt", "--quiet"]
    assert main([*argv, "--max-feature-nodes", "8", "--out", str(root / "path")]) == 0
    out = {}
    for name in ("demo", "budget", "path"):  # the graphs each folder's graph-metadata.json lists
        index = json.loads((root / name / "graph-metadata.json").read_text())
        out[name] = [root / name / f"{g['slug']}.json" for g in index["graphs"]]
    return out


def all_files(files: dict[str, list[Path]]) -> list[Path]:
    return [p for group in files.values() for p in group]


def test_every_file_passes_neuronpedias_schema_and_circuit_tracers_model(files):
    assert len(files["demo"]) >= 4 and files["budget"] and files["path"]
    for path in all_files(files):
        data = json.loads(path.read_text())
        jsonschema.validate(data, NEURONPEDIA)
        jsonschema.validate(data, CIRCUIT_TRACER)


def test_no_null_settings_and_no_bare_nan(files):
    for path in all_files(files):
        text = path.read_text()
        assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text, path.name
        data = json.loads(text)
        assert None not in data["metadata"]["generation_settings"].values(), path.name
        for node in data["nodes"]:
            for key in ("influence", "activation", "token_prob"):
                value = node.get(key)
                assert value is None or math.isfinite(value)


def test_a_budgeted_trace_records_its_budget_as_an_integer(files):
    data = json.loads(files["budget"][0].read_text())
    assert data["metadata"]["generation_settings"]["max_feature_nodes"] == 16


def test_slug_and_scan_follow_the_upload_rules_and_info_holds_no_path(files):
    """Traces without --local-viewer: slug and scan of letters, digits, '.', '_', '-'; no local path in
    the file (the model given by its folder's path is named by the folder's name)."""
    import re

    from clew.assets import ORGANISM

    for path in files["budget"] + files["path"]:
        data = json.loads(path.read_text())
        meta = data["metadata"]
        assert re.match(UPLOAD_NAME, meta["slug"]) and re.match(UPLOAD_NAME, meta["scan"]), meta["scan"]
        assert str(ORGANISM.folder) not in path.read_text()
        assert "/" not in meta["info"]["model"] and "/" not in meta["info"]["dictionary"]
    path_meta = json.loads(files["path"][0].read_text())["metadata"]
    assert path_meta["scan"] == ORGANISM.folder.name and path_meta["info"]["dictionary"] == "clt"


def test_influence_ranks_every_node_as_circuit_tracer_does(files):
    """The exported influence is the cumulative fraction at each node's rank among all nodes: embeddings
    have their own values, and the kept features' and errors' values stay within the node threshold's
    reach (the slider at node_threshold shows what the file holds)."""
    for path in files["demo"]:
        data = json.loads(path.read_text())
        embeddings = [n["influence"] for n in data["nodes"] if n["feature_type"] == "embedding"]
        assert any(v > 0 for v in embeddings), path.name
        inner = [n["influence"] for n in data["nodes"] if n["feature_type"] not in ("embedding", "logit")]
        assert inner and min(inner) > 0
        # every kept feature or error ranks within the node threshold, but for the one node that crosses it
        threshold = data["metadata"]["node_threshold"]
        assert sum(v > threshold for v in inner) <= 1, path.name

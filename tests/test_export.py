"""The viewers' graph JSON (export, import, round trip), the SVG picture and the strongest paths."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from hf_tiny import save_hf_model
from svg_checks import assert_text_inside
from tiny_dictionaries import random_transcoder

import clew
from clew.attribution import Graph, prune, trace
from clew.attribution.analysis import analyze
from clew.attribution.export import export_json
from clew.attribution.picture import describe_path, path_strength, render_svg, strongest_paths
from clew.attribution.viewer_import import import_json
from clew.attribution.viewer_schema import SLUG_RE, cantor, node_ids, slug_from, uncantor
from clew.errors import ClewError
from clew.models.loading import load_folder

FEATURE_TYPES = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
NODE_KEYS = {
    "node_id": str,
    "feature": int,
    "layer": str,
    "ctx_idx": int,
    "feature_type": str,
    "jsNodeId": str,
    "clerp": str,
    "influence": (float, int),
    "activation": (float, int, type(None)),
    "token_prob": (float, int),
    "is_target_logit": bool,
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Graph:
    folder = tmp_path_factory.mktemp("llama")
    save_hf_model("llama", folder)
    model = load_folder(folder, tokenizer=False, device="cpu")
    tc = random_transcoder(model.cfg, "clt-relu")
    tokens = torch.randint(0, 211, (11,), generator=torch.Generator().manual_seed(5))
    return trace(model, tc, tokens, max_n_logits=4, progress=False)


def hand_graph() -> Graph:
    """2 layers, 3 positions. The layer-0 feature with index 1 at position 1 has the id "0_1_1", which
    is also the old-style id "0_{layer}_{pos}" of the layer-1 error at position 1."""
    features = torch.tensor([[0, 1, 1], [0, 2, 7], [1, 2, 3]])  # [layer, position, index]
    f0, f1, f2, e02, e11, emb0, emb1, emb2 = 0, 1, 2, 3 + 2, 3 + 3 + 1, 9, 10, 11
    A = torch.zeros(5, 14)
    A[f0, [emb1, emb0]] = torch.tensor([2.0, 0.5])
    A[f1, [emb2, emb1]] = torch.tensor([1.5, -0.5])
    A[f2, [f0, f1, e02, emb2]] = torch.tensor([1.0, 2.0, 0.3, 0.7])
    A[3, [f2, f0, e11, emb2]] = torch.tensor([1.5, -0.4, 0.8, 0.2])
    A[4, [f2, f1]] = torch.tensor([0.5, 0.3])
    return Graph(
        prompt='<b> a&b\n"q"',
        tokens=torch.tensor([5, 6, 7]),
        token_strings=["<b>", " a&b", '\n"q"'],
        n_layers=2,
        features=features,
        activations=torch.tensor([1.0, 2.0, 3.0]),
        logit_tokens=torch.tensor([40, 41]),
        logit_probs=torch.tensor([0.6, 0.3]),
        logit_labels=[" yes", " no"],
        adjacency=A,
        model_name="hand",
        settings={"note": "by hand"},
        error_norms=torch.arange(6.0).reshape(2, 3),
    )


def load(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# --- export ----------------------------------------------------------------------------------------------


def test_schema_and_field_rules(graph, tmp_path):
    path = export_json(
        graph, analyze(graph), tmp_path, "g", model_id="tiny-llama", feature_json_base_url="https://x/f"
    )
    data = load(path)
    assert list(data) == ["metadata", "qParams", "nodes", "links"]
    meta = data["metadata"]
    assert meta["schema_version"] == 1 and meta["slug"] == "g" and meta["scan"] == "tiny-llama"
    assert meta["prompt_tokens"] == graph.token_strings and isinstance(meta["prompt"], str)
    assert meta["node_threshold"] == 0.8 and meta["transcoder_list"] == []
    assert meta["feature_details"] == {"feature_json_base_url": "https://x/f"}
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["generation_settings"]["n_active_features"] == graph.settings["n_active_features"]
    info = meta["info"]
    assert info["generator"] == {"name": "clew", "version": clew.__version__}
    assert isinstance(info["create_time_ms"], int) and re.fullmatch(r"[0-9a-f]{12}", info["content_hash"])
    assert set(info["scores"]) == {"replacement", "completeness", "pruned_replacement", "pruned_completeness"}
    assert data["qParams"] == {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }

    pruned = prune(graph, 0.8, 0.98)
    nodes, links = data["nodes"], data["links"]
    assert len(nodes) == int(pruned.node_mask.sum()) and len(links) == int(pruned.edge_mask.sum())
    ids = [n["node_id"] for n in nodes]
    assert len(set(ids)) == len(ids)
    L, P = graph.n_layers, graph.n_pos
    for n in nodes:
        for key, kind in NODE_KEYS.items():
            assert isinstance(n[key], kind), (key, n)
        assert n["feature_type"] in FEATURE_TYPES and n["jsNodeId"] == n["node_id"]
        assert 0 <= n["ctx_idx"] < P and 0 <= n["influence"] <= 1
        if n["feature_type"] == "cross layer transcoder":
            layer, index, pos = map(int, n["node_id"].split("_"))
            assert n["layer"] == str(layer) and pos == n["ctx_idx"]
            assert n["feature"] == (layer + index) * (layer + index + 1) // 2 + index
        elif n["feature_type"] == "mlp reconstruction error":
            assert n["node_id"] == f"{n['layer']}_-1_{n['ctx_idx']}" and 0 <= int(n["layer"]) < L
        elif n["feature_type"] == "embedding":
            assert n["layer"] == "E" and n["node_id"] == f"E_{int(graph.tokens[n['ctx_idx']])}_{n['ctx_idx']}"
        else:
            assert n["layer"] == str(L + 1) and n["ctx_idx"] == P - 1
            assert n["clerp"].startswith('Output "') and "(p=" in n["clerp"]
            assert float(n["clerp"].split("(p=")[1].split(")")[0]) == pytest.approx(n["token_prob"], abs=1e-3)
    kinds = [n["feature_type"] for n in nodes]
    assert kinds.count("embedding") == P and kinds.count("logit") == graph.n_logits
    targets = [n for n in nodes if n["is_target_logit"]]
    assert len(targets) == 1 and targets[0]["token_prob"] == max(n["token_prob"] for n in nodes)
    known = set(ids)
    for link in links:
        assert set(link) == {"source", "target", "weight"}
        assert link["source"] in known and link["target"] in known and isinstance(link["weight"], float)
    # compact: no indentation, at most 6 significant digits
    text = path.read_text()
    assert "\n " not in text
    for number in re.findall(r'"weight":(-?[0-9.e+-]+)', text):
        assert len(number.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) <= 6


def test_ids_are_unique_where_the_old_convention_collides(tmp_path):
    g = hand_graph()
    ids = node_ids(g)
    assert len(set(ids.values())) == g.n_nodes
    error_1_1 = g.error_offset + 1 * g.n_pos + 1
    assert ids[0] == "0_1_1" == f"0_{1}_{1}"  # the old error id of error_1_1 would be this feature's
    assert ids[error_1_1] == "1_-1_1"
    data = load(export_json(g, analyze(g, 1.0, 1.0), tmp_path, "hand"))
    written = [n["node_id"] for n in data["nodes"]]
    assert "0_1_1" in written and "1_-1_1" in written and len(set(written)) == len(written)
    err = next(n for n in data["nodes"] if n["node_id"] == "1_-1_1")
    assert (
        err["feature_type"] == "mlp reconstruction error" and err["layer"] == "1" and err["activation"] == 4.0
    )


def test_supernodes_and_pins_become_the_viewers_saved_view(tmp_path):
    g = hand_graph()
    g.annotations = {
        "supernodes": [
            {"name": "both", "members": ["L0/F1@1", "L0/F7@2", "L9/F9@9"], "source": "auto"},
            {"name": "gone", "members": ["error L0@0"]},  # no edges, so not exported
            {"name": "", "members": ["L1/F3@2", 5]},
            "not a supernode",
            {"name": "bad", "members": "L0/F1@1"},
        ],
        "pins": ["token@0", "nope", "L0/F1@1"],
    }
    data = load(export_json(g, analyze(g, 1.0, 1.0), tmp_path, "sn"))
    written = {n["node_id"] for n in data["nodes"]}
    assert "0_-1_0" not in written
    q = data["qParams"]
    assert q["supernodes"] == [["both", "0_1_1", "0_7_2"], ["supernode", "1_3_2"]]
    assert q["pinnedIds"] == ["0_1_1", "0_7_2", "1_3_2", "E_5_0", "3_40_2"]  # the top logit last
    assert set(q["pinnedIds"]) <= written
    assert (q["linkType"], q["clickedId"], q["sg_pos"]) == ("both", "", "")
    # read back as annotations, by node key, and written again the same
    back = import_json(tmp_path / "sn.json")
    assert back.annotations == {
        "supernodes": [
            {"name": "both", "members": ["L0/F1@1", "L0/F7@2"], "why": "", "source": "user"},
            {"name": "supernode", "members": ["L1/F3@2"], "why": "", "source": "user"},
        ],
        "pins": ["L0/F1@1", "L0/F7@2", "L1/F3@2", "token@0", "logit@0"],
    }
    again = load(export_json(back, analyze(back, 1.0, 1.0), tmp_path / "again", "sn"))["qParams"]
    assert again == q

    g.annotations = {"pins": ["token@1"]}
    q = load(export_json(g, analyze(g, 1.0, 1.0), tmp_path, "pins"))["qParams"]
    assert q["supernodes"] == [] and q["pinnedIds"] == ["E_6_1", "3_40_2"]
    g.annotations = {"supernodes": {"not": "a list"}, "pins": "token@1"}
    q = load(export_json(g, analyze(g, 1.0, 1.0), tmp_path, "bad"))["qParams"]
    assert q["supernodes"] == [] and q["pinnedIds"] == []
    assert import_json(tmp_path / "bad.json").annotations == {}


def test_import_reads_a_viewers_saved_view(tmp_path):
    data = circuit_tracer_style()
    data["qParams"] |= {
        "supernodes": [
            ["say is", "3_40_2", "0_1_1", "gone", "3_40_2"],
            [" ", "x7"],
            ["only gone", "gone"],
            7,
        ],
        "pinnedIds": ["3_40_2", "E_651_1", "27_9_2", None, "gone"],
    }
    path = tmp_path / "ct.json"
    path.write_text(json.dumps(data))
    g = import_json(path)
    assert g.annotations == {
        "supernodes": [{"name": "say is", "members": ["L3/F40@2", "L0/F1@1"], "why": "", "source": "user"}],
        "pins": ["L3/F40@2", "token@1", "logit@0"],
    }
    data["qParams"] = "not an object"
    path.write_text(json.dumps(data))
    assert import_json(path).annotations == {}


def test_repeated_logit_tokens_get_distinct_ids():
    g = hand_graph()
    g.logit_tokens = torch.tensor([40, 40])
    ids = node_ids(g)
    assert ids[g.logit_offset] != ids[g.logit_offset + 1]


def test_cantor_and_slugs(tmp_path):
    assert cantor(0, 391) == 77027 and uncantor(77027) == (0, 391)
    for x, y in itertools.product(range(30), range(0, 70_000, 997)):
        assert uncantor(cantor(x, y)) == (x, y)
    assert slug_from("The capital of Texas is") == "the-capital-of-texas-is"
    assert slug_from("<<>>") == "graph" and len(slug_from("word " * 100)) <= 48
    tokyo, osaka = (
        slug_from("東京は日本の首都"),
        slug_from("大阪は日本の都市"),
    )  # another script: a hash tells them apart
    assert tokyo != osaka and all(SLUG_RE.match(s) and len(s) <= 48 for s in (tokyo, osaka))
    assert slug_from("Café " * 20) != slug_from("Cafe " * 20) and len(slug_from("Café " * 20)) <= 48
    with pytest.raises(ClewError, match="slug"):
        export_json(hand_graph(), analyze(hand_graph()), tmp_path, "../escape")


def test_graph_metadata_is_updated_and_replaced(tmp_path):
    g = hand_graph()
    export_json(g, analyze(g), tmp_path, "one")
    export_json(g, analyze(g, 1.0, 1.0), tmp_path, "two")
    first = load(tmp_path / "graph-metadata.json")["graphs"]
    assert [e["slug"] for e in first] == ["one", "two"]
    for e in first:
        assert {"slug", "scan", "prompt", "prompt_tokens", "content_hash"} <= set(e)
        assert e["content_hash"] == load(tmp_path / f"{e['slug']}.json")["metadata"]["info"]["content_hash"]
    assert first[0]["content_hash"] != first[1]["content_hash"]  # different thresholds, different content
    export_json(g, analyze(g, 1.0, 1.0), tmp_path, "one")
    second = load(tmp_path / "graph-metadata.json")["graphs"]
    assert [e["slug"] for e in second] == ["one", "two"]
    assert second[0]["content_hash"] == second[1]["content_hash"] != first[0]["content_hash"]
    (tmp_path / "graph-metadata.json").write_text('{"graphs": 3}')
    with pytest.raises(ClewError, match=r"graph-metadata\.json.*'graphs'"):
        export_json(g, analyze(g), tmp_path, "three")


# --- import ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thresholds", [(1.0, 1.0), (0.8, 0.98), (0.5, 0.9)])
def test_round_trip(graph, tmp_path, thresholds):
    pruned = prune(graph, *thresholds)
    back = import_json(export_json(graph, analyze(graph, *thresholds), tmp_path, "rt"))
    kept = pruned.node_mask[: graph.n_features]
    assert torch.equal(back.features, graph.features[kept])
    assert torch.allclose(back.activations, graph.activations[kept], rtol=1e-5)
    assert back.n_layers == graph.n_layers and back.token_strings == graph.token_strings
    assert torch.equal(back.tokens, graph.tokens) and back.prompt == "".join(graph.token_strings)
    assert torch.equal(back.logit_tokens, graph.logit_tokens) and back.logit_labels == graph.logit_labels
    assert torch.allclose(back.logit_probs, graph.logit_probs, rtol=1e-5)
    assert torch.allclose(back.error_norms, graph.error_norms * pruned.node_mask[graph.error_offset : graph.embed_offset].reshape(graph.n_layers, graph.n_pos), rtol=1e-5)  # fmt: skip
    assert (
        back.settings["imported"]["slug"] == "rt" and back.settings["n_active_features"] == graph.n_features
    )
    assert back.settings["imported"]["path"].endswith("rt.json")
    # same weights on kept edges, zero elsewhere: map the old node indices to the new ones
    old_to_new = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    old_to_new[torch.nonzero(kept).squeeze(1)] = torch.arange(back.n_features)
    old_to_new[graph.error_offset :] = (
        torch.arange(graph.error_offset, graph.n_nodes) - graph.n_features + back.n_features
    )
    expected = torch.zeros_like(back.adjacency)
    rows, cols = torch.nonzero(pruned.edge_mask, as_tuple=True)
    new_rows = old_to_new[graph.row_nodes()[rows]]
    new_rows = torch.where(
        new_rows >= back.logit_offset, new_rows - back.logit_offset + back.n_features, new_rows
    )
    expected[new_rows, old_to_new[cols]] = graph.adjacency[rows, cols]
    assert (back.adjacency != 0).sum() == len(rows)
    assert torch.allclose(back.adjacency, expected, rtol=1e-5, atol=0)


def test_round_trip_of_a_graph_with_everything_kept(tmp_path):
    g = hand_graph()
    back = import_json(export_json(g, analyze(g, 1.0, 1.0), tmp_path))
    assert torch.equal(back.features, g.features) and torch.equal(back.adjacency, g.adjacency)
    assert back.error_norms.tolist() == [[0, 0, 2], [0, 4, 0]]  # only the errors with edges are written
    assert back.token_strings == g.token_strings
    assert back.prompt == g.prompt and back.model_name == "hand"


def circuit_tracer_style() -> dict:
    """A graph as circuit-tracer or Neuronpedia write it, with both of their error-id conventions."""

    def node(node_id, feature, layer, pos, ftype, **extra):
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": ftype,
                "jsNodeId": node_id.rsplit("_", 1)[0] + "-0", "clerp": "", "influence": 0.4, "activation": None} | extra  # fmt: skip

    clt, err = "cross layer transcoder", "mlp reconstruction error"
    return {
        "metadata": {
            "slug": "ct",
            "scan": "gemma-2-2b",
            "prompt": "<bos>The cat",
            "prompt_tokens": ["<bos>", "The", " cat"],
            "node_threshold": 0.8,
            "schema_version": 1,
            "info": {"generator": {"name": "circuit-tracer"}},
        },  # fmt: skip
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": [
            node("3_40_2", cantor(3, 40), "3", 2, clt, activation=2.0),
            node("0_1_1", cantor(0, 1), "0", 1, clt, activation=4.5),
            node("x7", cantor(1, 9), "1", 0, clt, activation=1.0),  # index from the Cantor pairing only
            node("0_2_1", -1, "2", 1, err),  # old-style error id: shaped like a layer-0 feature's
            node("5_-1_2", -1, "5", 2, err),
            node("E_2_0", 0, "E", 0, "embedding"),
            node("E_651_1", 1, "E", 1, "embedding"),
            node("E_4937_2", 2, "E", 2, "embedding"),
            node(
                "27_9_2",
                9,
                "27",
                2,
                "logit",
                clerp='Output " is" (p=0.612)',
                token_prob=0.612,
                influence=None,
            ),
            node("27_12_2", 12, "27", 2, "logit", clerp='Output """ (p=0.100)', influence=None),
        ],
        "links": [
            {"source": "E_651_1", "target": "0_1_1", "weight": 3.0},
            {"source": "0_1_1", "target": "3_40_2", "weight": 1.25},
            {"source": "0_2_1", "target": "3_40_2", "weight": -0.5},
            {"source": "E_2_0", "target": "x7", "weight": 0.25},
            {"source": "5_-1_2", "target": "27_9_2", "weight": 0.75},
            {"source": "3_40_2", "target": "27_9_2", "weight": 2.0},
            {"source": "E_4937_2", "target": "27_12_2", "weight": -1.0},
        ],
    }


def test_import_circuit_tracer_json(tmp_path):
    path = tmp_path / "ct.json"
    path.write_text(json.dumps(circuit_tracer_style()))
    g = import_json(path)
    assert g.n_layers == 26 and g.n_pos == 3 and g.n_features == 3 and g.n_logits == 2
    assert g.features.tolist() == [[0, 1, 1], [1, 0, 9], [3, 2, 40]]
    assert g.activations.tolist() == [4.5, 1.0, 2.0]
    assert g.tokens.tolist() == [2, 651, 4937] and g.token_strings == ["<bos>", "The", " cat"]
    assert g.logit_tokens.tolist() == [9, 12] and g.logit_labels == [" is", '"']
    assert g.logit_probs.tolist() == pytest.approx([0.612, 0.1])
    assert g.model_name == "gemma-2-2b" and g.settings["imported"]["path"] == str(path)

    err_2_1 = g.error_offset + 2 * g.n_pos + 1
    err_5_2 = g.error_offset + 5 * g.n_pos + 2
    assert g.kind(err_2_1) == "error" and g.layer_pos(err_2_1) == (2, 1)
    emb = g.embed_offset
    assert g.adjacency[0, emb + 1] == 3.0  # E_651_1 -> 0_1_1
    assert g.adjacency[2, 0] == 1.25 and g.adjacency[2, err_2_1] == -0.5
    assert g.adjacency[1, emb] == 0.25
    assert g.adjacency[3, err_5_2] == 0.75 and g.adjacency[3, 2] == 2.0 and g.adjacency[4, emb + 2] == -1.0
    assert int((g.adjacency != 0).sum()) == 7
    p = prune(g, 1.0, 1.0)
    assert p.node_mask[g.embed_offset :].all()


def test_import_reports_bad_input(tmp_path):
    path = tmp_path / "bad.json"
    data = circuit_tracer_style()
    data["links"][0]["source"] = "nowhere"
    path.write_text(json.dumps(data))
    with pytest.raises(ClewError, match=r"bad\.json: links\[0\]\.source 'nowhere'"):
        import_json(path)
    data = circuit_tracer_style()
    del data["metadata"]["prompt_tokens"]
    path.write_text(json.dumps(data))
    with pytest.raises(ClewError, match=r"bad\.json: .*metadata\.prompt_tokens"):
        import_json(path)
    data = circuit_tracer_style()
    data["nodes"][3]["feature_type"] = "lorsa"
    path.write_text(json.dumps(data))
    with pytest.raises(ClewError, match=r"bad\.json: nodes\[3\]: field 'feature_type'"):
        import_json(path)
    data = circuit_tracer_style()
    data["nodes"][1]["node_id"] = "3_40_2"
    path.write_text(json.dumps(data))
    with pytest.raises(ClewError, match="more than one node"):
        import_json(path)
    path.write_text("{not json")
    with pytest.raises(ClewError, match=r"bad\.json: not a JSON file"):
        import_json(path)
    with pytest.raises(ClewError, match="no such file"):
        import_json(tmp_path / "missing.json")


# --- the picture and the paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hand", "traced"])
def test_svg_parses_and_shows_the_tokens(graph, tmp_path, which):
    g = hand_graph() if which == "hand" else graph
    pruned = prune(g, 1.0, 1.0) if which == "hand" else prune(g)
    path = render_svg(g, pruned, tmp_path / "g.svg", labels={0: "a <label> & more"}, max_nodes=20)
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = ["".join(t.itertext()) for t in root.iter(f"{ns}text")]
    for tok in g.token_strings:
        shown = tok.replace("\n", "\\n")
        assert any(t == shown for t in texts), tok
    assert any("top prediction" in t for t in texts)
    assert any(g.prompt.replace("\n", "\\n")[:40] in t for t in texts)
    assert_text_inside(root)
    assert len(list(root.iter(f"{ns}circle"))) <= 20 and len(list(root.iter(f"{ns}line"))) > 0
    colours = {e.get("stroke") for e in root.iter(f"{ns}line")}
    assert "#e66101" in colours


def test_strongest_paths_on_the_hand_graph():
    g = hand_graph()
    pruned = prune(g, 1.0, 1.0)
    paths = strongest_paths(g, pruned, k=3)
    # brute force: every path from an embedding to the top logit
    children: dict[int, list[int]] = {}
    for r, t in enumerate(g.row_nodes().tolist()):
        for s in torch.nonzero(pruned.edge_mask[r]).squeeze(1).tolist():
            children.setdefault(s, []).append(t)

    def walk(path):
        if path[-1] == g.logit_offset:
            yield path
        for c in children.get(path[-1], []):
            yield from walk(path + [c])

    every = [p for e in range(g.embed_offset, g.logit_offset) for p in walk([e])]
    every.sort(key=lambda p: -path_strength(g, p))
    assert len(every) > 3
    assert [path_strength(g, p) for p in paths] == pytest.approx([path_strength(g, p) for p in every[:3]])
    assert describe_path(g, paths[0], {2: "yes-ish"}).endswith("→ logit ' yes'")
    assert describe_path(g, [11, 2, 12], {2: "yes-ish"}) == "'\\n\"q\"'@2 → L1/F3@2 [yes-ish] → logit ' yes'"


def test_strongest_paths_on_a_traced_graph(graph):
    pruned = prune(graph)
    paths = strongest_paths(graph, pruned, k=5)
    assert 1 <= len(paths) <= 5
    top = graph.logit_offset + int(torch.argmax(graph.logit_probs))
    strengths = [path_strength(graph, p) for p in paths]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(strengths)) and all(s > 0 for s in strengths)
    row_of = {n: r for r, n in enumerate(graph.row_nodes().tolist())}
    for p in paths:
        assert graph.kind(p[0]) == "embedding" and p[-1] == top
        assert all(pruned.edge_mask[row_of[t], s] for s, t in itertools.pairwise(p))
        text = describe_path(graph, p)
        assert text.startswith(repr(graph.token_strings[graph.layer_pos(p[0])[1]])) and "→ logit" in text
    assert not math.isnan(sum(strengths))

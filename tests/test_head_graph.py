"""Heads as nodes: every edge across positions routed exactly through head nodes, saved, exported, on the organism."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny import FAMILIES
from tiny_dictionaries import KINDS, random_transcoder

from clew.attribution import Graph, analyze, import_json, trace
from clew.attribution.export import export_json
from clew.attribution.head_graph import HeadGraph, route_heads, routed_view, strongest
from clew.attribution.viewer_schema import HEAD_FEATURE_TYPE
from clew.cli import main
from clew.errors import ClewError

TOL = 1e-5


def positions(graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_nodes,) every node's position, and (R,) every adjacency row's target position."""
    pos = torch.tensor([graph.layer_pos(n)[1] for n in range(graph.n_nodes)])
    return pos, pos[graph.row_nodes()]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_heads_carry_every_edge_across_positions_exactly(models, family, kind):
    model = models[family]
    tc = random_transcoder(model.cfg, kind)
    prompt = torch.randint(0, 211, (9,), generator=torch.Generator().manual_seed(3))
    graph = trace(model, tc, prompt, max_n_logits=2, progress=False)
    hg = route_heads(model, tc, graph, progress=False)
    pos, target_pos = positions(graph)
    adj = graph.adjacency
    r, i, s = (x.long() for x in hg.routes.unbind(1))
    # routes only run from an earlier position to the target's, through a head at the target's position
    assert len(r) > 0
    assert bool((pos[s] < target_pos[r]).all())
    assert bool((hg.heads[i, 2] == target_pos[r]).all())
    assert int(hg.heads[:, 0].max()) < model.cfg.n_layers and int(hg.heads[:, 1].max()) < model.cfg.n_heads
    # for every (source, target) pair: the routes through the heads plus the direct part are the edge, and
    # across positions the direct part is zero: every path there arrives through some head
    direct = hg.direct()
    scale = adj.abs().amax(1, keepdim=True).clamp_min(1e-12)
    cross = pos[None, :] != target_pos[:, None]
    assert float((direct.abs() / scale)[cross].max()) <= TOL, "an edge across positions is not all routed"
    assert torch.equal(direct[~cross], adj[~cross]), "an edge within one position was routed"
    # the head nodes' edges are flows: each balances, each target's inputs and each source's outputs add up
    h_in, h_out = hg.head_in(), hg.head_out()
    torch.testing.assert_close(h_in.sum(1), h_out.sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(direct.sum(1) + h_out.sum(0), adj.sum(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(direct.sum(0) + h_in.sum(0), adj.sum(0), atol=1e-5, rtol=1e-5)
    # with a tolerance fewer routes are stored and what is left out stays direct (exact by construction)
    loose = route_heads(model, tc, graph, tolerance=0.05, progress=False)
    assert len(loose.routes) < len(hg.routes)
    leftover = (loose.direct().abs() / scale)[cross].max()
    assert float(leftover) <= 0.05 * model.cfg.n_layers * model.cfg.n_heads + TOL


def test_the_file_and_the_viewers_json(models, tmp_path):
    model = models["llama"]
    tc = random_transcoder(model.cfg, "clt-relu")
    prompt = torch.randint(0, 211, (10,), generator=torch.Generator().manual_seed(4))
    graph = trace(model, tc, prompt, max_n_logits=2, progress=False)
    analysis = analyze(graph, 0.9, 0.99)
    rows = analysis.pruned.node_mask[graph.row_nodes()].nonzero().squeeze(1)
    hg = route_heads(model, tc, graph, rows, progress=False)
    hg.qk["head L1.H0@9"] = {"key": 3, "pairs": [["a", "b", 1.5]], "query_side": [], "key_side": []}
    path = hg.save(tmp_path / "g.heads.safetensors")
    back = HeadGraph.load(path)
    for name in ("heads", "routes", "route_weights", "routed_rows", "patterns"):
        assert torch.equal(getattr(back, name), getattr(hg, name)), name
    assert torch.equal(back.graph.adjacency, graph.adjacency) and back.qk == hg.qk
    with pytest.raises(ClewError, match="HeadGraph.load"):
        Graph.load(path)
    graph.save(tmp_path / "plain.safetensors")
    with pytest.raises(ClewError, match="a plain graph"):
        HeadGraph.load(tmp_path / "plain.safetensors")

    share = 0.2
    json_path = export_json(graph, analysis, tmp_path, "g-heads", heads=hg, head_share=share)
    data = json.loads(json_path.read_text())
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids)
    heads = [n for n in data["nodes"] if n["feature_type"] == HEAD_FEATURE_TYPE]
    view = routed_view(hg, analysis.pruned.edge_mask, share)
    assert len(heads) == len(view.heads) > 0
    assert data["metadata"]["info"]["heads"]["node_ids"] == [n["node_id"] for n in heads]
    assert all(n["clerp"].startswith("head L") and n["feature"] < -1 for n in heads)
    assert len({n["feature"] for n in heads}) == len(heads)
    links = data["links"]
    assert all(x["source"] in ids and x["target"] in ids for x in links)
    for n in heads:  # what enters a head node leaves it
        into = sum(x["weight"] for x in links if x["target"] == n["node_id"])
        out = sum(x["weight"] for x in links if x["source"] == n["node_id"])
        assert abs(into - out) <= 1e-4 * max(1.0, abs(out)), n["node_id"]
    # each kept target's inputs: the direct links plus the head links are its kept edges, less the small
    # remainders the view leaves out (each under `share` of its edge)
    plain = json.loads(export_json(graph, analysis, tmp_path, "g").read_text())
    for node in plain["nodes"]:
        if node["feature_type"] not in ("cross layer transcoder", "logit"):
            continue
        want = sum(x["weight"] for x in plain["links"] if x["target"] == node["node_id"])
        got = sum(x["weight"] for x in links if x["target"] == node["node_id"])
        bound = share * sum(abs(x["weight"]) for x in plain["links"] if x["target"] == node["node_id"])
        assert abs(got - want) <= bound + 1e-4, node["node_id"]
    # the viewers' JSON reads back without the head nodes
    again = import_json(json_path)
    assert again.n_features == plain_features(plain) and again.settings["imported"][
        "head_nodes_dropped"
    ] == len(heads)


def plain_features(data: dict) -> int:
    return sum(n["feature_type"] == "cross layer transcoder" for n in data["nodes"])


def test_mistakes_are_one_line_errors(models, tmp_path, capsys):
    model = models["gpt2"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    graph = trace(model, tc, torch.arange(3, 9), max_n_logits=1, progress=False)
    with pytest.raises(ClewError, match="rows must be adjacency rows"):
        route_heads(model, tc, graph, [len(graph.adjacency)], progress=False)
    with pytest.raises(ClewError, match="tolerance must be zero or more"):
        route_heads(model, tc, graph, tolerance=-1, progress=False)
    with pytest.raises(ClewError, match="no such graph file"):
        HeadGraph.load(tmp_path / "missing.heads.safetensors")
    for option, value in (("--head-share", "0"), ("--head-tolerance", "-1")):
        argv = ["trace", "Mr Wen. Then Mr", "-m", "organism", "--heads", option, value, "-o", str(tmp_path)]
        assert main(argv) == 2
        assert option in capsys.readouterr().err


def test_the_induction_head_carries_the_name_on_the_organism(tmp_path, capsys):
    """`clew trace --heads` on an induction probe: at the second ' Mr' the induction head L2.H4 (docs/research.md)
    is among the strongest head nodes; it attends to the surname after the first ' Mr' because of what the
    previous-token head L1.H0 wrote there (key side) and of the current token's features (query side)."""
    prompt = "It was a quiet day in Nampa. Mr Wenzem opened the shop early. Dr Vemlorros fed the cat. Then Mr"
    out = tmp_path / "g"
    assert main(["trace", prompt, "-m", "organism", "--heads", "--quiet", "-o", str(out), "--slug", "p"]) == 0
    printed = capsys.readouterr().out
    assert "head L2.H4@26" in printed
    hg = HeadGraph.load(out / "p.heads.safetensors")
    analysis = analyze(hg.graph)
    top = [hg.head_key(i) for i, _ in strongest(hg, analysis.pruned.influence, 3)]
    assert "head L2.H4@26" in top, top
    why = hg.qk["head L2.H4@26"]
    first = hg.graph.token_strings.index(" Mr")
    assert why["key"] == first + 1 and why["weight"] > 0.5
    assert why["key_side"][0][0] == f"head L1.H0@{first + 1}"
    assert why["query_side"][0][0].endswith("@26") and why["query_side"][0][1] > 0
    data = json.loads((out / "p-heads.json").read_text())
    assert any(n["node_id"] == "A2_4_26" and n["feature_type"] == HEAD_FEATURE_TYPE for n in data["nodes"])

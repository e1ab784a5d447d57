"""What many graphs say together: the tests' arithmetic, aggregation per group, and comparison."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from clew.attribution import Graph, prune
from clew.batch import BatchConfig, GraphStore, run_batch
from clew.batch.aggregate import ALL, aggregate
from clew.batch.diff import diff_graphs, diff_sets
from clew.batch.nodes import view
from clew.batch.prompts import PromptSpec
from clew.batch.stats import bh_qvalues, fisher_exact, mcnemar_exact, permutation_pvalues
from clew.cli import main
from clew.resolve import default_dictionary

ROOT = Path(__file__).resolve().parent.parent


def test_fisher_exact_on_known_tables():
    assert math.isclose(fisher_exact(3, 4, 1, 4), 0.4857142857, rel_tol=1e-8)  # the lady tasting tea
    assert math.isclose(fisher_exact(5, 5, 0, 6), 1 / math.comb(11, 5), rel_tol=1e-9)
    assert math.isclose(fisher_exact(2, 4, 2, 4), 1.0)


def test_permutation_pvalues_mcnemar_and_bh():
    import torch

    a, b = torch.arange(1.0, 6.0)[None], torch.arange(6.0, 12.0)[None]  # every A below every B
    p = float(permutation_pvalues(a, b)[0])
    assert abs(p - 2 / math.comb(11, 5)) < 0.002  # the exact two-sided permutation p-value
    assert float(permutation_pvalues(a, a)[0]) == 1.0
    # mostly zeros: 100 graphs without the feature against 3 with it; p is bounded by the permutations,
    # where a rank test's normal approximation would give about 1e-16
    zeros, few = torch.zeros(1, 100), torch.tensor([[0.01, 0.02, 0.03]])
    p = float(permutation_pvalues(zeros, few, n_perm=999)[0])
    assert 1 / 1000 <= p <= 0.002
    paired = float(permutation_pvalues(torch.arange(1.0, 11.0)[None], torch.zeros(1, 10), paired=True)[0])
    assert abs(paired - 2 / 1024) < 0.002  # every pair the same way: the exact sign-flip p-value
    assert math.isclose(mcnemar_exact(0, 6), 2 / 64) and mcnemar_exact(3, 3) == 1.0
    q = bh_qvalues([0.01, 0.04, 0.03, 0.5])
    assert [round(v, 4) for v in q] == [0.04, 0.0533, 0.0533, 0.5]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("two_hop_batch", ROOT / "examples" / "two_hop_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = module.prompts(11)  # Texas's five cities, California's six
    assert {r["state"] for r in records} == {"Texas", "California"}
    specs = [PromptSpec(r["id"], r["prompt"], fields={"state": r["state"]}) for r in records]
    root = tmp_path_factory.mktemp("batch") / "store"
    s = GraphStore(root)
    run_batch(s, specs, BatchConfig("organism", default_dictionary("organism"), threads=1), progress=False)
    yield s
    s.close()


def test_aggregate_counts_what_the_graphs_hold(store):
    agg = aggregate([store], group_by="state", progress=False)
    assert agg.groups == {ALL: 11, "Texas": 5, "California": 6}
    rows = {(r.group, r.layer, r.index): r for r in agg.features}
    graphs = {r["id"]: (r["fields"]["state"], Graph.load(store.graph_path(r))) for r in store.rows()}
    # recount one busy feature straight from the graph files
    layer, index = next((r.layer, r.index) for r in agg.features if r.group == "Texas" and r.kept == 5)
    for group in ("Texas", "California"):
        present = kept = 0
        for state, g in graphs.values():
            if state != group:
                continue
            nodes = ((g.features[:, 0] == layer) & (g.features[:, 2] == index)).nonzero().squeeze(1)
            present += len(nodes) > 0
            kept += bool(prune(g).node_mask[nodes].any())
        row = rows.get((group, layer, index))
        got = (row.present, row.kept) if row else (0, 0)
        assert got == (present, kept)
    # some features are kept in every Texas graph and in no California graph, and the reverse
    texas = [r for r in agg.features if r.group == "Texas" and r.kept == 5 and r.kept_elsewhere == 0]
    california = [
        r for r in agg.features if r.group == "California" and r.kept == 6 and r.kept_elsewhere == 0
    ]
    assert texas and california
    assert all(math.isclose(r.p_value, 1 / math.comb(11, 5)) and r.specificity == 1 for r in texas)
    assert all(
        0 <= r.mean_influence <= 1 and r.std_influence >= 0 and r.kept <= r.present for r in agg.features
    )
    assert any(e.target == "logit ' Austin'" and e.kept == 5 for e in agg.edges if e.group == "Texas")


def test_diff_of_two_graphs(store):
    a = Graph.load(store.graph_path(store.row("dallas")))
    b = Graph.load(store.graph_path(store.row("los-angeles")))
    d = diff_graphs(a, b)
    assert "' Dallas' | ' Los Angeles'" in d.alignment
    assert d.only_a and d.only_b
    va, vb = view(a), view(b)
    for n in d.only_a[:5]:
        assert ("F", *n.key[1:3]) in {k[:3] for k in va.kept} and n.kept_a and not n.kept_b
    assert any(e.target == "logit ' Austin'" for e in d.edges_only_a[:5])
    assert all(e.target != "logit ' Austin'" for e in d.edges_only_b)
    same = diff_graphs(a, a)
    assert not same.only_a and not same.only_b and not same.edges_only_a
    assert all(n.influence_a == n.influence_b for n in same.changes)
    assert not vb.edges.keys() & {k for k in va.edges if k[1] == ("L", " Austin")}


def test_diff_of_two_sets(store):
    tx = [Graph.load(store.graph_path(r)) for r in store.rows() if r["fields"]["state"] == "Texas"]
    ca = [Graph.load(store.graph_path(r)) for r in store.rows() if r["fields"]["state"] == "California"]
    d = diff_sets(tx, ca)
    assert (d.n_a, d.n_b) == (5, 6)
    top = d.features[0]
    assert top.q_value < 0.05 and (top.kept_a, top.kept_b) in (
        (5, 0),
        (0, 6),
    )  # all of one side, none of the other
    null = diff_sets(tx[:2] + ca[:3], tx[2:4] + ca[3:5])  # mixed halves: nothing should stand out
    assert min(t.q_value for t in null.features) > 0.05
    same = diff_sets(tx, tx, paired=True)  # one model against itself, prompt by prompt
    assert same.paired and all(t.p_kept == 1.0 and t.p_influence == 1.0 for t in same.features)
    assert all(t.p_influence >= 1 / 10000 for t in d.features)
    pairs = diff_sets(tx + tx[:1], ca, paired=True)  # six Texas graphs against six California ones
    assert min(t.p_kept for t in pairs.features) == 2 / 64  # McNemar: kept in A only in all six pairs


def test_aggregate_and_diff_commands(store, tmp_path, capsys):
    out = tmp_path / "agg.csv"
    assert main(["aggregate", str(store.root), "--group-by", "state", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Texas (5): " in text and "California (6): " in text
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert {r["group"] for r in table} == {ALL, "Texas", "California"}
    assert (tmp_path / "agg.edges.csv").exists()
    assert main(["diff", f"{store.root}:dallas", f"{store.root}:los-angeles"]) == 0
    assert "features kept in A only" in capsys.readouterr().out
    assert main(["diff", f"{store.root}:state=Texas", f"{store.root}:state=California"]) == 0
    assert "A: 5 graphs, B: 6 graphs" in capsys.readouterr().out
    assert main(["diff", f"{store.root}:nowhere", f"{store.root}:dallas"]) == 2
    assert "no prompt with id 'nowhere'" in capsys.readouterr().err
    assert main(["aggregate", str(store.root), "--group-by", "colour", "--quiet"]) == 2
    assert "no prompt field or index column 'colour'" in capsys.readouterr().err

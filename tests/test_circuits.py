"""Circuits: supernodes found deterministically and by the rules, exact summed edges, bottleneck paths,
claims whose constrained measurement equals the graph's direct edges, the picture and the command."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest
import torch
from hf_tiny import FAMILIES
from svg_checks import assert_text_inside
from tiny_dictionaries import random_transcoder

from clew.attribution import Graph, analyze, trace
from clew.circuits import Supernode, find_circuit, group_features, measure_claims, summarize
from clew.circuits.picture import render_circuit
from clew.cli import main

DALLAS = "The capital of the state containing Dallas is"
LA = "The capital of the state containing Los Angeles is"


@pytest.fixture(scope="module")
def organism():
    from clew.assets import ORGANISM
    from clew.commands.demo import shipped_store
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, str(ORGANISM.dictionary_path("clt")))
    return model, tc, shipped_store("clt", tc)


@pytest.fixture(scope="module")
def dallas(organism):
    model, tc, store = organism
    from clew.commands.features import graph_labels

    a, b = trace(model, tc, DALLAS, progress=False), trace(model, tc, LA, progress=False)
    analysis = analyze(a)
    circuit = find_circuit(a, analysis, graph_labels(store, a), store, contrast=b, model=model, transcoder=tc)
    return a, b, analysis, circuit


def test_supernodes_follow_the_rules_and_are_deterministic(dallas):
    a, b, analysis, circuit = dallas
    groups = circuit.supernodes
    assert 2 <= len(groups) <= 12
    again = group_features(a, analysis, contrast=b)
    assert [g.members for g in again] == [g.members for g in groups]  # the same graph, the same groups
    seen = set()
    for g in groups:
        assert len(g.members) >= 2 and g.name
        assert {int(a.features[n, 1]) for n in g.members} == {g.position}  # one position
        assert all(bool(analysis.pruned.node_mask[n]) and n < a.n_features for n in g.members)
        assert set(g.why) == set(g.members)
        assert not seen & set(g.members)  # no feature in two groups
        seen |= set(g.members)
    # at the city, the prompt-specific features and the shared ones never mix
    at_city = [g for g in groups if g.position == 7]
    assert at_city and all(g.side in ("specific", "shared") for g in at_city)
    assert any(g.side == "specific" for g in at_city)


def test_supernodes_round_trip_through_the_graph_file(dallas, tmp_path):
    a, _, _, circuit = dallas
    path = a.save(tmp_path / "g.safetensors")
    back = Graph.load(path)
    stored = back.annotations["supernodes"]
    assert [s["name"] for s in stored] == [g.name for g in circuit.supernodes]
    again = [Supernode.from_json(back, s) for s in stored]
    assert [g.members for g in again] == [g.members for g in circuit.supernodes]


def test_summary_edges_are_exact_sums_and_paths_rank_by_bottleneck(dallas):
    a, _, _, circuit = dallas
    square = a.square().float()
    for t, s in itertools.product(range(len(circuit.boxes)), repeat=2):
        if t == s:
            continue
        want = square[circuit.boxes[t].members][:, circuit.boxes[s].members].sum()
        assert abs(float(circuit.weight[t, s]) - float(want)) <= 1e-5 * max(1.0, abs(float(want)))
    paths = circuit.paths(k=5)
    assert (
        paths
        and circuit.boxes[paths[0][1][0]].kind == "token"
        and circuit.boxes[paths[0][1][-1]].kind == "logit"
    )
    necks = [neck for neck, _ in paths]
    assert necks == sorted(necks, reverse=True)
    for neck, path in paths:
        flows = [float(circuit.flow[t, s]) for s, t in zip(path, path[1:])]
        assert all(bool(circuit.kept[t, s]) for s, t in zip(path, path[1:]))
        assert neck == pytest.approx(min(flows))
    assert 0 < circuit.coverage <= 1
    assert all(line.startswith("'") for line in circuit.diagram(3))


def test_boxes_stay_on_a_path_from_a_token_or_an_error_group_to_a_logit(dallas):
    """Error groups are sources (no inputs), like tokens: one with a kept edge into the circuit stays,
    and every other box is reached from a source and reaches a logit through kept edges."""
    from clew.circuits.summary import _on_paths

    kinds = ["token", "error", "feature", "feature", "logit", "error"]
    kept = torch.zeros(6, 6, dtype=torch.bool)  # kept[target, source]
    kept[2, 1] = kept[4, 2] = True  # errors -> feature -> logit; the token and the other errors idle
    kept[4, 3] = True  # a feature fed by nothing
    _, alive = _on_paths(kept, kinds)
    assert alive.tolist() == [False, True, True, False, True, False]

    a, _, _, circuit = dallas
    assert any(b.kind == "error" for b in circuit.boxes)  # the organism's last position: errors@8
    k = circuit.kept
    for i, b in enumerate(circuit.boxes):
        assert b.kind in ("token", "error") or bool(k[i].any()), b.key  # reached
        assert b.kind == "logit" or bool(k[:, i].any()), b.key  # reaches on


def test_claims_constrained_equals_the_graph_and_the_swap_runs(organism, dallas):
    model, tc, store = organism
    a, b, analysis, circuit = dallas
    claims = measure_claims(model, tc, circuit)
    assert len(claims.claims) == sum(box.kind in ("supernode", "feature") for box in circuit.boxes)
    scale = max(abs(c.direct) for c in claims.claims)
    for c in claims.claims:
        assert abs(c.constrained - c.direct) <= 1e-4 * scale  # the graph's direct edges, measured
        assert 0 <= c.p_after <= 1 and c.flagged == (abs(c.free) <= abs(c.control) + 0.05)
    from clew.circuits import measure_swap
    from clew.commands.features import graph_labels

    contrast = find_circuit(b, analyze(b), graph_labels(store, b), store, contrast=a)
    swap = measure_swap(model, tc, circuit, contrast)
    assert swap.n_out > 0 and swap.n_in > 0
    from clew.intervene.swap import specific

    # ' Los' has no counterpart in the one-token ' Dallas': its features are counted as left out
    los = [n for n in specific(b, a) if int(b.features[n, 1]) == 7]
    assert los and swap.left_out == len(los) and swap.n_in + swap.left_out == len(specific(b, a))
    assert swap.p_answer[1] < swap.p_answer[0]  # Austin falls when Texas's specific features go
    assert swap.live is not None and swap.live[0] < swap.p_answer[0]  # also through the model's own MLPs
    assert swap.worked and swap.worked_live  # California's features in: Sacramento both ways


def test_picture_labels_every_box(dallas, tmp_path):
    _, _, _, circuit = dallas
    path = render_circuit(circuit, tmp_path / "c.svg")
    root = ET.parse(path).getroot()
    keys = [g.get("data-key") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    assert sorted(keys) == sorted(b.key for b in circuit.boxes)
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for box in circuit.boxes:
        if box.kind == "supernode":
            assert box.key in texts
    assert_text_inside(root)


@pytest.mark.parametrize("family", FAMILIES[:3])
def test_every_family_gets_a_circuit(models, family):
    """No meaning expected from random dictionaries: the code paths run and the sums stay exact."""
    model = models[family]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    tokens = torch.randint(0, 211, (9,), generator=torch.Generator().manual_seed(1))
    graph = trace(model, tc, tokens, max_n_logits=2, desired_logit_prob=0.99, progress=False)
    analysis = analyze(graph)
    circuit = summarize(graph, analysis, group_features(graph, analysis))
    claims = measure_claims(model, tc, circuit)
    scale = max([abs(c.direct) for c in claims.claims] + [1e-6])
    assert all(abs(c.constrained - c.direct) <= 1e-4 * scale for c in claims.claims)


def test_circuit_command(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["circuit", DALLAS, "-m", "organism", "--contrast-prompt", LA, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "supernodes, single features and error groups:" in text and "swap:" in text and "bottleneck" in text
    )
    assert "↑" not in text  # named from the shipped feature store, not promoted-token guesses
    names = sorted(p.name for p in out.iterdir())
    slug = "the-capital-of-the-state-containing-dallas-is"
    assert names == sorted([f"{slug}.safetensors", f"{slug}-circuit.svg", f"{slug}-circuit.json"])
    assert Graph.load(out / f"{slug}.safetensors").annotations["supernodes"]
    assert main(["circuit", DALLAS, "-m", "organism", "--group-threshold", "2"]) == 2


def test_a_topic_adds_to_the_name_and_meets_its_share(organism, dallas):
    """The topic word in a name is a word of the group's example windows, in at least TOPIC_SHARE of
    them (by weight), and none of the prompt's tokens, the peak tokens or the token the group says."""
    from clew.circuits.examples import group_examples
    from clew.circuits.names import TOPIC_SHARE, Background, fires_on_and_topic, says, windows_of

    model, tc, store = organism
    a, _, analysis, circuit = dallas
    background = Background.of(store)
    prompt_words = {background.texts[t].strip() for t in a.tokens.tolist()}
    named = 0
    for g in circuit.supernodes:
        said, token = says(a, analysis, g.members)
        found = group_examples(model, tc, a, g.members, store)
        assert g.examples == [e.text(store) for e in found[:3]]  # shown beside the name
        windows = windows_of(a, g.members, analysis.pruned.influence, store, found)
        fires, topic = fires_on_and_topic(a, windows, background, [token])
        assert f"({topic})" in g.name if topic else "(" not in g.name.split("→")[0]
        if not topic:
            continue
        named += 1
        assert topic not in prompt_words and topic not in fires.split("/")
        assert token is None or background.texts[token].strip() != topic
        total = sum(w for w, _, _ in windows)  # a topic word's weighted share of the windows, recomputed
        shares = [
            sum(w for w, ts, _ in windows if any(background.texts[t].strip() == word for t in ts)) / total
            for word in topic.split()
        ]
        assert max(shares) >= TOPIC_SHARE - 1e-9
    assert named >= 1


def test_a_topic_or_peak_of_several_tokens_is_read_whole():
    """The word beside the topic token in most of its occurrences joins it (``New Hampshire``); a
    neighbour seen in fewer than PHRASE_SHARE of them, one that is no word, or a prompt's token does
    not. A peak token is read the same way from its occurrences at the peaks only."""
    from clew.circuits.names import _phrase, _text

    texts = {1: " in", 2: " New", 3: " Hampshire", 4: ".", 5: " York", 6: " Keene", 7: " Cedar", 8: " Rapids"}
    hampshire = [(1.0, [6, 1, 2, 3, 4], 0), (1.0, [1, 2, 3], 0), (0.5, [2, 3, 4], 0)]
    assert _text(_phrase(3, hampshire, texts), texts) == " New Hampshire"  # '.' after it is no word
    assert _phrase(3, hampshire, texts, skip=[2]) == [3]  # a prompt's token never joins
    mixed = [(1.0, [2, 3], 0), (1.0, [2, 5], 0)]
    assert _phrase(2, mixed, texts) == [2]  # Hampshire and York each follow it half the time
    # Rapids peaks after Cedar twice; elsewhere (not at a peak) it stands alone, which does not count
    rapids = [(1.0, [7, 8, 1], 1), (1.0, [6, 7, 8], 2), (3.0, [8, 1, 6], 1)]
    assert _phrase(8, rapids, texts, at_peaks=True) == [7, 8]
    assert _phrase(8, rapids, texts) == [8]  # all its occurrences: Cedar before 2 of 5
    texts[9] = " containing"  # a lower-case word before a name is no part of it
    containing = [(1.0, [9, 8, 1], 1)] * 3
    assert _phrase(8, containing, texts, at_peaks=True) == [8] and _phrase(8, containing, texts) == [9, 8]


def test_a_peak_phrase_is_never_the_topic(organism):
    """The words of the phrase a group fires on are left out of its topic: windows of Cedar Rapids
    name the state beside it, not the city's other word."""
    from types import SimpleNamespace

    from clew.circuits.names import Background, fires_on_and_topic

    _, _, store = organism
    background = Background.of(store)
    ids = {text.strip(): t for t, text in background.texts.items() if text.startswith(" ")}
    cedar, rapids, iowa, city, a, in_ = (ids[w] for w in ("Cedar", "Rapids", "Iowa", "city", "a", "in"))
    windows = [(1.0, [cedar, rapids, ids["is"], a, city, in_, iowa], 1)] * 3 + [(1.0, [cedar, rapids], 1)] * 3
    graph = SimpleNamespace(tokens=torch.tensor([ids["The"]]))
    fires, topic = fires_on_and_topic(graph, windows, background)
    assert fires == "Cedar Rapids" and topic == "Iowa"


def test_a_groups_examples_are_where_its_members_fire_as_here(organism, dallas):
    """Each example's score is the weighted Jaccard overlap of the members' activations there with
    theirs in the graph, recomputed on the context alone (no batch, no padding); the best is 1 at the
    city itself, and the examples of the group at the city peak on Texas's cities."""
    from clew.circuits.examples import group_examples
    from clew.features.encode import feature_activations

    model, tc, store = organism
    a, _, _, circuit = dallas
    group = next(g for g in circuit.supernodes if g.position == 7 and g.side == "specific")
    found = group_examples(model, tc, a, group.members, store)
    assert found == group_examples(model, tc, a, group.members, store)  # deterministic
    assert [e.score for e in found] == sorted((e.score for e in found), reverse=True)
    here = a.activations[group.members].float()
    for e in found[:3]:
        acts = feature_activations(model, tc, torch.tensor([list(e.tokens)]))
        there = torch.stack(
            [acts[int(a.features[n, 0])][0, e.peak, int(a.features[n, 2])] for n in group.members]
        )
        jaccard = float(torch.minimum(there, here).sum() / torch.maximum(there, here).sum())
        assert abs(jaccard - e.score) < 1e-5
    texts = store.vocab()
    assert texts[found[0].tokens[found[0].peak]] == " Dallas" and found[0].score > 0.99
    from clew.circuits.examples import StoreContexts, candidate_contexts

    own = set(candidate_contexts(a, group.members, store, model.tokenizer.bos_token_id))
    assert any(e.tokens not in own for e in found)  # the second step, through the store, found some
    dallas = found[0].tokens[found[0].peak]
    assert all(dallas in c for c in StoreContexts.of(store).peaking_on(dallas))
    assert len(found) >= 10 and all(e.score >= 0.8 * found[0].score for e in found[10:])
    from clew.organism.world import US_STATES

    texas = {w for s in US_STATES if s.name == "Texas" for c in s.cities for w in c.split()}
    peaks = [texts[e.tokens[e.peak]].strip() for e in found[:3]]
    assert all(p in texas for p in peaks), peaks


def test_own_examples_name_groups_of_any_model(tmp_path):
    """On a tiny random Llama with a random dictionary and a store collected here (no meaning
    expected), groups are named from their own examples: every group gets examples whose peak is
    shown and whose score is recomputed from the dictionary on the context alone."""
    import itertools

    from hf_tiny import save_hf_model, save_tiny_tokenizer

    from clew.circuits.examples import group_examples
    from clew.features import CollectConfig, FeatureStore, collect, feature_activations
    from clew.models.loading import load_folder

    save_hf_model("llama", tmp_path / "m")
    save_tiny_tokenizer(tmp_path / "m")
    model = load_folder(tmp_path / "m", device="cpu")
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    rng = torch.Generator().manual_seed(0)

    class Words:
        name = "random words"

        def documents(self, start: int):
            docs = (
                " ".join(f"w{int(i)}" for i in torch.randint(0, 200, (30,), generator=rng))
                for _ in itertools.count()
            )
            return itertools.islice(docs, start, None)

    settings = dict(
        max_docs=60, ctx_len=32, docs_per_block=16, n_top=4, n_random=4, progress=False, threads=1
    )
    collect(model, tc, Words(), tmp_path / "s.sqlite", CollectConfig(**settings))
    store = FeatureStore.open(tmp_path / "s.sqlite")
    graph = trace(model, tc, "w1 w2 w3 w4 w5 w6 w7", max_n_logits=2, desired_logit_prob=0.99, progress=False)
    analysis = analyze(graph)
    circuit = find_circuit(graph, analysis, None, store, model=model, transcoder=tc)
    assert circuit.supernodes and any(g.examples for g in circuit.supernodes)
    for g in circuit.supernodes:
        found = group_examples(model, tc, graph, g.members, store)
        assert g.name and g.examples == [e.text(store) for e in found[:3]]
        assert all("⟦" in e for e in g.examples)
        here = graph.activations[g.members].float()
        for e in found[:2]:
            acts = feature_activations(model, tc, torch.tensor([list(e.tokens)]))
            there = torch.stack(
                [acts[int(graph.features[n, 0])][0, e.peak, int(graph.features[n, 2])] for n in g.members]
            )
            assert (
                abs(float(torch.minimum(there, here).sum() / torch.maximum(there, here).sum()) - e.score)
                < 1e-5
            )


def test_kept_contexts_forget_the_oldest_never_the_ones_asked_for(organism, monkeypatch):
    """Past MAX_KEPT, the contexts used longest ago are forgotten; a context asked for again is kept."""
    import clew.circuits.examples as examples

    model, tc, _ = organism
    monkeypatch.setattr(examples, "MAX_KEPT", 3)
    runner = examples.ContextActivations(model, tc)
    a, b, c, d = ((0, 274, t) for t in (265, 280, 312, 314))  # run in this order
    runner.run([a, b, c], 3)
    runner.run([a, d], 3)  # a is asked for again: b, now the one used longest ago, goes
    assert list(runner.kept) == [c, a, d]
    assert set(runner.depth) == {c, a, d}  # the forgotten ones' depths go with them
    assert runner.members(a, [0], [0]).shape == (3, 1)


def test_contexts_run_as_deep_as_asked_and_again_when_asked_deeper(organism):
    """A context runs through the model and dictionary up to the layer asked for, no further; asked
    for a deeper layer later, it runs again; the activations are those of a full run."""
    from clew.circuits.examples import ContextActivations
    from clew.features.encode import feature_activations

    model, tc, _ = organism
    runner = ContextActivations(model, tc)
    c = (0, 274, 265, 280)
    full = feature_activations(model, tc, torch.tensor([list(c)]))
    runner.run([c], 1)
    assert sorted(runner.kept[c]) == [0, 1] and runner.depth[c] == 1
    runner.run([c], 0)  # shallower: nothing to run
    assert runner.depth[c] == 1
    runner.run([c], 3)
    assert sorted(runner.kept[c]) == [0, 1, 2, 3] and runner.depth[c] == 3
    for layer in range(4):
        idx = full[layer][0].amax(0).nonzero().flatten().tolist()  # every feature active somewhere
        assert idx
        got = runner.members(c, [layer] * len(idx), idx)  # (P, k)
        assert torch.allclose(got, full[layer][0][:, idx])


def test_the_influence_map_accounts_for_all_the_influence(dallas):
    """examples/influence_map.py: every node's share lands in one cell, so the shares add up to 1, and
    the counts are the graph's active and kept features at each position and layer."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "influence_map.py"
    spec = importlib.util.spec_from_file_location("influence_map", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph, _, analysis, _ = dallas
    shares = module.influence_shares(graph, analysis)
    total = sum(map(sum, shares["features"])) + sum(map(sum, shares["errors"])) + sum(shares["tokens"])
    assert total == pytest.approx(1.0, abs=1e-5)
    assert sum(map(sum, shares["active"])) == graph.n_features
    F = graph.n_features
    assert sum(map(sum, shares["kept"])) == int(analysis.pruned.node_mask[:F].sum())
    city = graph.token_strings.index(" Dallas")
    layer0 = (graph.features[:, 0] == 0) & (graph.features[:, 1] == city)
    assert shares["active"][city][0] == int(layer0.sum())
    table = module.influence_map(graph, analysis)
    assert len(table.splitlines()) == graph.n_pos + 2 and "' Dallas'" in table

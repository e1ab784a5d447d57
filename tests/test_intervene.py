"""Interventions: constrained runs reproduce every edge; free runs, generation, steering and the syntax."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES
from tiny_dictionaries import KINDS, random_transcoder

from clew.attribution import trace
from clew.errors import ClewError
from clew.intervene import Edit, Interventions, Node, Steer, generate, intervene, parse_edit, parse_node
from clew.replacement import LocalReplacement, ReplacementModel

TOL = 1e-4


def prompt(n: int = 9, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 211, (n,), generator=torch.Generator().manual_seed(seed))


def graph_node(graph, node: int) -> Node:
    kind = graph.kind(node)
    layer, pos = graph.layer_pos(node)
    if kind == "feature":
        return Node("feature", layer, (pos,), int(graph.features[node, 2]))
    return Node(kind, layer, (pos,))


def worst_zeroing_error(model, tc, graph, n_sources: int) -> float:
    """Zero about ``n_sources`` sources of every kind (features, errors, embeddings) in turn in the
    constrained mode; the largest gap between each target's change (feature pre-activations, logit
    directions) and minus its edge from the source, relative to the largest edge."""
    tokens = graph.tokens
    local = LocalReplacement(model, tc, tokens)
    watch = [graph_node(graph, f) for f in range(graph.n_features)]
    scale = float(graph.adjacency.abs().max())
    sources = list(range(graph.n_features)) + list(range(graph.error_offset, graph.logit_offset))
    worst = 0.0
    for source in sources[:: max(1, len(sources) // n_sources)]:
        out = intervene(
            model,
            tc,
            tokens,
            Interventions([Edit(graph_node(graph, source))]),
            mode="constrained",
            watch=watch,
            local=local,
        )
        feature_change = torch.tensor([after - before for _, before, after in out.watched])
        logit_change = (out.normed - out.clean_normed) @ graph.logit_vectors.T
        measured = torch.cat([feature_change, logit_change])
        worst = max(worst, float((measured + graph.adjacency[:, source].float()).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_zeroing_reproduces_every_edge(models, family, kind):
    """Zeroing any source (feature, error node, embedding) in the constrained mode moves every target (each
    feature's pre-activation, each logit direction) by exactly minus the edge between them."""
    model = models[family]
    tc = random_transcoder(model.cfg, kind)
    tokens = prompt()
    graph = trace(model, tc, tokens, max_n_logits=2, desired_logit_prob=0.99, progress=False)
    assert worst_zeroing_error(model, tc, graph, n_sources=25) < TOL


def test_free_mode_matches_the_replacement_model_and_errors_choice(models):
    model = models["gemma2"]
    tc = random_transcoder(model.cfg, "clt-relu")
    tokens = prompt()
    clean = model.run(tokens[None]).logits[0, -1]
    for errors in ("frozen", "live"):  # no intervention: the model itself
        out = intervene(model, tc, tokens, Interventions(), errors=errors)
        assert (out.logits - clean).abs().max() < 1e-4 and (out.clean_logits - clean).abs().max() < 1e-6
    acts = ReplacementModel(model, tc).features(tokens[None])
    layer, pos = 0, 4
    f = int(acts[layer][0, pos].argmax())
    node = Node("feature", layer, (pos,), f)
    old = ReplacementModel(model, tc).intervene(tokens[None], [(layer, pos, f, 0.0)]).logits[0, -1]
    new = intervene(model, tc, tokens, Interventions([Edit(node)]), watch=[node])
    assert torch.allclose(new.logits, old, atol=1e-6)
    assert new.watched[0][1] == pytest.approx(float(acts[layer][0, pos, f])) and new.watched[0][2] == 0.0
    live = intervene(model, tc, tokens, Interventions([Edit(node)]), errors="live")
    assert (live.logits - new.logits).abs().max() > 1e-6  # errors move with the inputs
    # scaling by 2 and setting to twice the value agree; "onward" reaches every later position
    double = float(acts[layer][0, pos, f]) * 2
    a = intervene(model, tc, tokens, Interventions([Edit(node, "scale", 2.0)]))
    b = intervene(model, tc, tokens, Interventions([Edit(node, "set", double)]))
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    onward = Node("feature", layer, (pos,), f, onward=True)
    assert onward.at(9) == [4, 5, 6, 7, 8]
    every = Interventions([Edit(Node("feature", layer, tuple(range(pos, 9)), f))])
    assert torch.allclose(
        intervene(model, tc, tokens, Interventions([Edit(onward)])).logits,
        intervene(model, tc, tokens, every).logits,
    )


@torch.no_grad()
def test_steering_is_a_residual_edit_in_both_modes(models):
    model = models["llama"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    tokens = prompt()
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    steer = Interventions(
        steers=[Steer(model.cfg.n_layers, (-1,), v)]
    )  # the final residual: logits move linearly
    out = intervene(model, tc, tokens, steer, mode="constrained")
    local = LocalReplacement(model, tc, tokens)
    direction = model.unembed.weight[5].float()
    expected = float(model.ln_final(v[None], local.cache.scales["final"][0, -1:]) @ direction) - float(
        model.ln_final(torch.zeros(1, model.cfg.d_model), local.cache.scales["final"][0, -1:]) @ direction
    )
    assert float(out.logits[5] - out.clean_logits[5]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # a steering vector equal to minus an embedding is zeroing that embedding
    emb = local.embeddings[3]
    a = intervene(model, tc, tokens, Interventions(steers=[Steer(0, (3,), -emb)]), mode="constrained")
    b = intervene(model, tc, tokens, Interventions([Edit(Node("embedding", -1, (3,)))]), mode="constrained")
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    c = intervene(model, tc, tokens, Interventions(steers=[Steer(0, (3,), -emb)]))
    d = intervene(model, tc, tokens, Interventions([Edit(Node("embedding", -1, (3,)))]))
    assert torch.allclose(c.logits, d.logits, atol=1e-5)


def test_generation_with_and_without_interventions(models):
    model = models["llama"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    tokens = prompt()
    plain = generate(model, tc, tokens, Interventions(), 6)
    seq = tokens.clone()  # the model's own greedy continuation
    for _ in range(6):
        seq = torch.cat([seq, model.run(seq[None]).logits[0, -1].argmax()[None]])
    assert torch.equal(plain, seq[len(tokens) :])
    v = 30 * model.unembed.weight[17].float()  # steer every position, generated ones too, towards token 17
    steered = generate(
        model, tc, tokens, Interventions(steers=[Steer(model.cfg.n_layers, (len(tokens) - 1,), v, True)]), 6
    )
    assert (steered == 17).sum() >= 5 and (plain == 17).sum() <= 1
    a = generate(model, tc, tokens, Interventions(), 6, temperature=1.0, seed=4)
    b = generate(model, tc, tokens, Interventions(), 6, temperature=1.0, seed=4)
    assert torch.equal(a, b)


def test_syntax_and_bad_input_are_one_line_errors(models):
    assert parse_node("L1/F12@6") == Node("feature", 1, (6,), 12)
    assert parse_node("L1/F12@6+").onward and parse_node("L1/F12@6,8").positions == (6, 8)
    assert parse_node("error L2@-1") == Node("error", 2, (-1,))
    assert parse_node("token ' Dallas'@5") == Node("embedding", -1, (5,))
    assert parse_edit("L0/F3@2=1.5", "set") == Edit(Node("feature", 0, (2,), 3), "set", 1.5)
    model = models["llama"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    tokens = prompt()
    for make, phrase in (
        (lambda: parse_node("L1/F@3"), "cannot read node"),
        (lambda: parse_edit("L0/F3@2", "set"), "NODE=VALUE"),
        (lambda: parse_edit("L0/F3@2=big", "scale"), "not a number"),
        (
            lambda: intervene(model, tc, tokens, Interventions([Edit(Node("feature", 0, (2,), 999))])),
            "out of range",
        ),
        (
            lambda: intervene(model, tc, tokens, Interventions([Edit(Node("feature", 7, (2,), 1))])),
            "no layer 7",
        ),
        (
            lambda: intervene(model, tc, tokens, Interventions([Edit(Node("feature", 0, (20,), 1))])),
            "outside the 9 tokens",
        ),
        (
            lambda: intervene(model, tc, tokens, Interventions(steers=[Steer(1, (2,), torch.zeros(5))])),
            "residual stream has",
        ),
        (
            lambda: intervene(model, tc, tokens, Interventions([Edit(Node("error", 0, (2,)))])),
            "constrained mode only",
        ),
        (lambda: intervene(model, tc, tokens, Interventions(), mode="loose"), "mode 'loose'"),
    ):
        with pytest.raises(ClewError) as err:
            make()
        assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_align_matches_a_template_across_spans_of_different_length():
    from clew.intervene.swap import align

    pairs, span_a, span_b = align([0, 1, 2, 9, 5, 6], [0, 1, 2, 7, 8, 5, 6])
    assert span_a == [3] and span_b == [3, 4]
    assert pairs == {0: 0, 1: 1, 2: 2, 3: 4, 4: 5, 5: 6}


def test_the_organism_swaps_texas_for_california():
    """The features that carry ' Austin' are found from the graphs of the Dallas and Los Angeles prompts:
    zeroing them removes ' Austin', swapping in California's gives ' Sacramento', and as many matched
    random features do neither; the swap also turns the generated continuation, and so does steering
    with the difference of the two prompts' residual streams at the city."""
    from clew.assets import ORGANISM
    from clew.attribution.trace import tokenize
    from clew.intervene.swap import carriers, put_edits, specific_effect, swap_experiment, zero_edits
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, None)
    dallas = "The capital of the state containing Dallas is"
    la = "The capital of the state containing Los Angeles is"
    report = swap_experiment(model, tc, dallas, la, " Austin", " Sacramento", k=20, draws=3)
    e = specific_effect(report)
    assert e["clean_p_a"] > 0.9 and e["ablated_p_a"] < 0.1 and e["control_ablated_p_a_min"] > 0.8
    assert e["swapped_p_b"] > 0.5 and e["control_swapped_p_b_max"] < 0.05  # 0.73 with the shipped CLT
    assert report.rows[2].top == " Sacramento"
    # generation with the swap applied at every step
    a, b, pairs = carriers(model, tc, dallas, la, " Austin", " Sacramento")
    edits = zero_edits(a.top(20)) + put_edits(b.top(20), {pb: pa for pa, pb in pairs.items()})
    tokens = tokenize(model, dallas)[0]
    plain = model.tokenizer.decode(generate(model, tc, tokens, Interventions(), 3).tolist())
    swapped = model.tokenizer.decode(generate(model, tc, tokens, Interventions(edits), 3).tolist())
    assert plain.startswith(" Austin") and swapped.startswith(" Sacramento"), (plain, swapped)
    # steering: the residual difference at the city's last token, entering layer 2
    la_tokens = tokenize(model, la)[0]
    with torch.no_grad():
        ra = model.run(tokens[None], record=True).cache.resid_pre[2][0, 7]
        rb = model.run(la_tokens[None], record=True).cache.resid_pre[2][0, 8]
    steered = generate(model, tc, tokens, Interventions(steers=[Steer(2, (7,), rb - ra)]), 3)
    assert model.tokenizer.decode(steered.tolist()).startswith(" Sacramento")


def test_constrained_zeroing_reproduces_the_organism_dallas_edges():
    """The same check on the organism's Dallas graph: every feature, error and embedding source zeroed in
    turn moves every target by minus its edge."""
    from clew.assets import ORGANISM
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, None)
    graph = trace(model, tc, "The capital of the state containing Dallas is", progress=False)
    assert worst_zeroing_error(model, tc, graph, n_sources=40) < TOL

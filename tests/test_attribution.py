"""Exactness of the attribution engine: every edge against a perturbation of its source."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES
from tiny_dictionaries import KINDS, random_transcoder

from clew.attribution import Graph, prune, scores, trace
from clew.attribution.prune import cumulative_threshold, mass_threshold
from clew.attribution.verify import check_graph

TOL = 1e-4


def prompt(n: int = 11, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, 211, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_edge_matches_a_perturbation(models, family, kind):
    model = models[family]
    tc = random_transcoder(model.cfg, kind)
    graph = trace(model, tc, prompt(), max_n_logits=3, desired_logit_prob=0.99, batch_size=16, progress=False)
    assert graph.n_features > 10, "too few active features to test anything"
    assert graph.n_features == graph.settings["n_active_features"]
    check = check_graph(model, tc, graph, max_sources=None)
    assert check.n_sources == graph.n_features + (model.cfg.n_layers + 1) * graph.n_pos
    assert check.max_edge_error < TOL, check
    assert check.max_sum_error < TOL, check
    # every edge type is present and nonzero somewhere
    feats, errs = (
        graph.adjacency[:, : graph.n_features],
        graph.adjacency[:, graph.error_offset : graph.embed_offset],
    )
    embs = graph.adjacency[:, graph.embed_offset : graph.logit_offset]
    assert feats[: graph.n_features].abs().max() > 0 and errs.abs().max() > 0 and embs.abs().max() > 0
    assert graph.adjacency[graph.n_features :].abs().max() > 0  # logit rows


def test_no_edge_from_later_positions_or_layers(models):
    model = models["llama"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    graph = trace(model, tc, prompt(), progress=False)
    A = graph.adjacency[: graph.n_features, : graph.n_features]
    lt, pt = graph.features[:, 0], graph.features[:, 1]
    later = (lt[None, :] >= lt[:, None]) | (pt[None, :] > pt[:, None])  # source not strictly before target
    assert A[later].abs().max() == 0


def test_budget_keeps_the_most_influential_features(models):
    model = models["gemma3"]
    tc = random_transcoder(model.cfg, "clt-relu")
    full = trace(model, tc, prompt(), progress=False)
    small = trace(model, tc, prompt(), max_feature_nodes=20, batch_size=8, progress=False)
    assert small.n_features == 20 < full.n_features
    # the feature with the largest direct effect on the top logit is among them
    top = full.adjacency[full.n_features, : full.n_features].abs().argmax()
    assert any((small.features == full.features[top]).all(1))
    check = check_graph(model, tc, small, max_sources=None)
    assert check.max_edge_error < TOL


def test_custom_targets(models):
    model = models["qwen3"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    g = trace(model, tc, prompt(), targets=[3, 7], progress=False)
    assert g.logit_tokens.tolist() == [3, 7]
    c = trace(model, tc, prompt(), contrast=(3, 7), progress=False)
    n = c.logit_offset
    assert torch.allclose(c.adjacency[-1, :n], g.adjacency[-2, :n] - g.adjacency[-1, :n], atol=1e-5)
    d = trace(model, tc, prompt(), direction=torch.randn(model.cfg.d_model), progress=False)
    assert check_graph(model, tc, d).max_edge_error < TOL


def test_save_load_round_trip(models, tmp_path):
    model = models["gpt2"]
    tc = random_transcoder(model.cfg, "skip-topk")
    graph = trace(model, tc, prompt(), progress=False)
    keys = graph.node_index()
    assert len(keys) == graph.n_nodes and [graph.node_key(n) for n in keys.values()] == list(keys)
    graph.annotations = {"supernodes": [{"name": "first", "members": list(keys)[:2]}], "pins": ["token@0"]}
    path = graph.save(tmp_path / "g.safetensors")
    back = Graph.load(path)
    assert torch.equal(back.adjacency, graph.adjacency) and torch.equal(back.features, graph.features)
    assert back.settings == graph.settings and back.logit_labels == graph.logit_labels
    assert back.token_strings == graph.token_strings and back.annotations == graph.annotations
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]  # no temporary file left behind


def test_pruning_and_scores(models):
    model = models["llama3_tied"]
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    graph = trace(model, tc, prompt(), progress=False)
    kinds = graph.kinds()
    p = prune(graph, node_threshold=0.5, edge_threshold=0.9)
    assert p.node_mask[kinds >= 2].all()  # embeddings and logits always kept
    assert 0 < p.node_mask[kinds == 0].sum() < graph.n_features
    assert p.edge_mask.sum() < (graph.adjacency != 0).sum()
    s = scores(graph)
    assert 0 < s.replacement < 1 and 0 < s.completeness < 1
    sub = scores(graph, keep=p.node_mask)
    assert sub.completeness <= s.completeness + 1e-6 and sub.replacement <= s.replacement + 1e-6


def test_bisection_threshold_agrees_with_sorting():
    values = torch.rand(10_000) ** 4
    for fraction in (0.5, 0.8, 0.98):
        exact = cumulative_threshold(values, fraction)
        approx = mass_threshold(
            lambda: iter([values[:5000], values[5000:]]), float(values.sum()), fraction, float(values.max())
        )
        assert values[values >= approx].sum() >= fraction * values.sum() - 1e-3
        assert abs(approx - exact) <= 1e-6 + 1e-3 * exact


def test_long_prompt_split_by_position_is_exact(models):
    """Batches of targets are split by position on longer prompts; the rows must not change."""
    model = models["qwen2"]
    tc = random_transcoder(model.cfg, "plt-jumprelu", n_features=16)
    long = prompt(n=60, seed=9)
    graph = trace(model, tc, long, max_feature_nodes=200, batch_size=128, progress=False)
    one = trace(model, tc, long, max_feature_nodes=200, batch_size=16, progress=False)  # no split
    assert torch.equal(graph.features, one.features)
    assert (graph.adjacency - one.adjacency).abs().max() <= 1e-5 * graph.adjacency.abs().max()
    assert check_graph(model, tc, graph, max_sources=48).max_edge_error < TOL


def test_rows_in_any_order_equal_rows_in_batch_order(models):
    """Engine.rows carries only the targets at or above each layer; the order it is given the targets
    in (its own, written in place, or any other) must not change a row."""
    from clew.attribution.engine import Engine

    model = models["llama"]
    tc = random_transcoder(model.cfg, "clt-relu")
    engine = Engine(model, tc, prompt(n=40, seed=3))
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(engine.n_features, generator=g)[:100]
    ordered = pick[Engine.batch_order(engine.feat_layer[pick], engine.feat_pos[pick])[0]]
    again = Engine.batch_order(engine.feat_layer[ordered], engine.feat_pos[ordered])[0]
    assert torch.equal(again, torch.arange(len(ordered)))  # idempotent: the in-place path is taken
    layers = engine.feat_layer[ordered]
    assert len(set(layers.tolist())) > 1
    in_order = engine.rows(engine.feature_targets(ordered))
    shuffled = engine.rows(engine.feature_targets(pick))
    one_by_one = torch.cat(
        [engine.rows(engine.feature_targets(ordered[i : i + 1])) for i in range(0, 100, 9)]
    )
    where = {int(v): j for j, v in enumerate(pick)}
    back = torch.tensor([where[int(v)] for v in ordered])
    assert (in_order - shuffled[back]).abs().max() <= 1e-5 * in_order.abs().max()
    assert (in_order[::9] - one_by_one).abs().max() <= 1e-5 * in_order.abs().max()


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_long_prompt_memory_savers_are_exact(models, family, monkeypatch):
    """What long prompts do to bound memory (patterns rebuilt block by block instead of kept, the
    pattern's transpose by query blocks, rows in a file) must give the graph of the plain path."""
    import clew.attribution.spill as spill
    import clew.replacement.backward as backward
    import clew.replacement.local as local

    model = models[family]
    tc = random_transcoder(model.cfg, "plt-jumprelu", n_features=16)
    long = prompt(n=50, seed=4)
    plain = trace(model, tc, long, max_feature_nodes=60, batch_size=32, progress=False)
    monkeypatch.setattr(backward, "QUERY_BLOCK", 7)  # 8 blocks, the last one short
    monkeypatch.setattr(local, "KEPT_PATTERNS_BYTES", 0)
    spilled = []
    monkeypatch.setattr(spill, "should_spill", lambda n: spilled.append(n) or True)
    saver = trace(model, tc, long, max_feature_nodes=60, batch_size=32, progress=False)
    assert spilled, "the rows were not put in a file"
    assert saver.settings["rows_on_disk"] is True
    assert torch.equal(saver.features, plain.features)
    assert (saver.adjacency - plain.adjacency).abs().max() <= 1e-5 * plain.adjacency.abs().max()
    assert check_graph(model, tc, saver, max_sources=40).max_edge_error < TOL


def test_patterns_rebuilt_equal_the_kept_ones(models):
    model = models["gemma3"]  # sliding windows, query/key norms and soft-capping, if configured
    tokens = prompt(n=30, seed=2)[None]
    kept = model.run(tokens, record=True).cache.patterns
    rebuilt = model.run(tokens, record=True, keep_patterns=False).cache.patterns
    assert rebuilt.kept is False and len(rebuilt) == len(kept) == model.cfg.n_layers
    for layer in range(len(kept)):
        assert torch.allclose(rebuilt[layer], kept[layer], atol=1e-6)
        assert torch.allclose(rebuilt.rows(layer, 11, 20), kept[layer][:, :, 11:20, :20], atol=1e-6)


def test_finite_check_names_the_node_and_lets_huge_edges_pass(models):
    """The graph's finiteness check sums each row first: an infinity or NaN is named by its row's
    node, while finite edges whose row sum overflows float32 are not mistaken for one."""
    from clew.errors import ClewError

    model = models["llama"]
    graph = trace(model, random_transcoder(model.cfg, "plt-jumprelu"), prompt(), progress=False)
    graph.check_finite()
    huge = graph.adjacency.clone()
    huge[2, :4] = 3e38  # finite, but their sum is not
    Graph(**{**vars(graph), "adjacency": huge}).check_finite()
    for bad in (float("inf"), float("nan")):
        broken = graph.adjacency.clone()
        broken[2, 1] = bad
        with pytest.raises(ClewError, match="edges into"):
            Graph(**{**vars(graph), "adjacency": broken}).check_finite()


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_folded_attention_gives_the_graph_of_the_unfolded_one(models, family, monkeypatch):
    """The attention transpose with the norms folded into the weights and the pattern (short prompts)
    and the one that applies them step by step (prompts past FOLD_BYTES) give the same edges; the
    families cover RMSNorm, Gemma's post-attention norm and GPT-2's centred LayerNorm."""
    import clew.replacement.backward as backward

    model = models[family]
    tc = random_transcoder(model.cfg, "clt-jumprelu-resid")
    folded = trace(model, tc, prompt(), progress=False)
    monkeypatch.setattr(backward, "FOLD_BYTES", 0)
    plain = trace(model, tc, prompt(), progress=False)
    assert torch.equal(folded.features, plain.features)
    scale = float(plain.adjacency.abs().max())
    assert scale > 0 and float((folded.adjacency - plain.adjacency).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("family", ["gemma3", "llama"])
@pytest.mark.parametrize("kind", ["plt-jumprelu", "clt-jumprelu-resid"])
def test_logit_weights_are_the_last_layers_edges_to_the_logits_up_to_the_norm_scales(models, family, kind):
    """clew.replacement.logit_weights (what first labels and the feature store's logit effects read):
    a last-layer feature at the last position reaches the logits by the residual stream alone, so its
    graph edge per unit of activation is its logit weights times the unembedding, up to the frozen norm
    scales, one factor shared by every such feature. Gemma's post-MLP norm weight must be in it: left
    out, the edges no longer line up (for a dictionary that writes before that norm)."""
    from clew.replacement.logit_weights import logit_weights

    model = models[family]
    tc = random_transcoder(model.cfg, kind, n_features=64)
    tokens = torch.randint(0, 211, (9,), generator=torch.Generator().manual_seed(3))
    graph = trace(model, tc, tokens, max_n_logits=3, desired_logit_prob=0.99, progress=False)
    L, P = graph.n_layers, graph.n_pos
    nodes = ((graph.features[:, 0] == L - 1) & (graph.features[:, 1] == P - 1)).nonzero().squeeze(1)
    assert len(nodes) >= 3
    unembed = model.unembed.weight.detach().float()
    directions = unembed[graph.logit_tokens] - unembed.mean(0)  # (T, D): the graph's logit targets
    rows = graph.adjacency[graph.n_features :, nodes].T.float()  # (n, T): feature -> logit edges
    per_unit = rows / graph.activations[nodes, None].float()
    idx = graph.features[nodes, 2]

    def misfit(weights):
        want = (weights @ directions.T).flatten()
        got = per_unit.flatten()
        c = (got @ want) / (want @ want)
        return float((got - c * want).abs().max() / got.abs().max())

    assert misfit(logit_weights(model, tc, L - 1, idx)) < 1e-4
    post = model.blocks[L - 1].mlp_post
    if post is not None and tc.cfg.write == "mlp_out":
        with torch.no_grad():
            without = logit_weights(model, tc, L - 1, idx) / (post.weight.float() + post.offset)
        assert misfit(without) > 1e-2

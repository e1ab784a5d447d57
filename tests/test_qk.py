"""QK attribution: exact on every family and dictionary kind, and each piece's marginal against a perturbation."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES
from tiny_dictionaries import KINDS, random_transcoder

from clew.errors import ClewError
from clew.qk import qk_attribution, qk_query, residual_terms
from clew.replacement import LocalReplacement

TOL = 1e-4


def prompt(n: int = 9, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, 211, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def frozen_score(
    local: LocalReplacement, layer: int, head: int, query: int, key: int, resid: torch.Tensor
) -> float:
    """The head's pre-cap score from a residual stream (1, P, D) entering ``layer``, every norm's scale
    frozen at the clean run, through the model's own attention code over the whole prompt."""
    block, cache, cfg = local.model.blocks[layer], local.cache, local.model.cfg
    clean_x = block.ln1(cache.resid_pre[layer], cache.scales[f"{layer}.ln1"])
    x = block.ln1(resid, cache.scales[f"{layer}.ln1"])
    rope = local.model.rope(layer, local.n_pos, x)
    q, k = block.attn.queries_keys(x, rope, block.attn.qk_norm_scales(clean_x))
    return float(q[0, head, query] @ k[0, head // (cfg.n_heads // cfg.n_kv_heads), key]) * cfg.scale


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_sum_to_the_score_and_marginals_match_perturbations(models, family, kind):
    model = models[family]
    local = LocalReplacement(model, random_transcoder(model.cfg, kind), prompt())
    L, P, cfg = local.n_layers, local.n_pos, model.cfg
    for layer in range(L):
        # the pieces of every residual stream sum to it
        for pos in (0, P - 1):
            terms = residual_terms(local, layer, pos, check=False)
            clean = local.cache.resid_pre[layer][0, pos]
            assert (terms.stacked().sum(0) - clean).abs().max() <= TOL * clean.abs().max()
        # the scores are the model's: their softmax over the keys is the recorded pattern
        results = qk_query(local, P - 1, layers=[layer])
        for head in range(cfg.n_heads):
            row = {r.key: r for r in results if r.head == head}
            scores = torch.full((P,), float("-inf"))
            for key, r in row.items():
                scores[key] = r.capped if r.capped is not None else r.score
                assert abs(float(r.pairs.sum()) - r.score) <= TOL * max(1.0, abs(r.score)), (layer, head, key)
            pattern = local.cache.patterns[layer][0, head, P - 1].float()
            torch.testing.assert_close(torch.softmax(scores, 0), pattern, atol=1e-5, rtol=1e-4)
    # each piece's marginal is the score's change per unit of its write, norms frozen (key before query)
    layer, head, query, key = L - 1, cfg.n_heads - 1, P - 1, P - 4
    r = qk_attribution(local, layer, head, query, key)
    resid = local.cache.resid_pre[layer].float()
    base = frozen_score(local, layer, head, query, key, resid)
    assert abs(base - r.score) <= TOL * max(1.0, abs(r.score))
    for side, pos, terms, marginals in (
        ("query", query, r.query_terms, r.query_marginals),
        ("key", key, r.key_terms, r.key_marginals),
    ):
        for i in range(len(terms) - 1):  # the last piece is the side's constant, not a write
            moved = resid.clone()
            moved[0, pos] += terms.vectors[i]
            change = frozen_score(local, layer, head, query, key, moved) - base
            assert abs(change - float(marginals[i])) <= TOL * max(1.0, float(r.pairs.abs().sum())), (
                side,
                terms.labels[i],
            )
    kinds = set(r.query_terms.kinds)
    assert {"embedding", "feature", "error", "head", "bias"} <= kinds, kinds


def test_mistakes_are_one_line_errors(models):
    model = models["gemma2"]  # sliding window of 5
    local = LocalReplacement(model, random_transcoder(model.cfg, "plt-jumprelu"), prompt())
    for args, phrase in (
        ((9, 0, 3, 1), "layer 9 is out of range"),
        ((0, 4, 3, 1), "head 4 is out of range"),
        ((0, 0, 9, 1), "query position 9 is out of range"),
        ((0, 0, 3, 5), "comes after query position 3"),
        ((0, 0, 8, 1), "sliding window"),
    ):
        with pytest.raises(ClewError) as err:
            qk_attribution(local, *args)
        assert phrase in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "qwen3"])
def test_a_head_piece_expands_into_what_the_head_read(models, family):
    """A head's output is the sum of the pieces it read (pattern-weighted, through its value path), and
    their contributions through one side of a later score sum to that head piece's marginal."""
    from clew.qk import expand_head, head_value_terms

    model = models[family]
    local = LocalReplacement(model, random_transcoder(model.cfg, "clt-relu"), prompt())
    L, P = local.n_layers, local.n_pos
    r = qk_attribution(local, L - 1, 0, P - 1, P - 3)
    for side, terms, marginals in (
        ("query", r.query_terms, r.query_marginals),
        ("key", r.key_terms, r.key_marginals),
    ):
        heads = [i for i, kind in enumerate(terms.kinds) if kind == "head"]
        assert heads, side
        for i in heads[:: max(1, len(heads) // 3)]:
            label = terms.labels[i]
            layer, head, pos = (
                int(x) for x in label.removeprefix("head L").replace(".H", " ").replace("@", " ").split()
            )
            parts = head_value_terms(local, layer, head, pos)  # asserts that they sum to the head's output
            assert torch.allclose(
                parts.stacked().sum(0),
                terms.vectors[i],
                atol=1e-4 * (1 + float(terms.vectors[i].abs().max())),
            )
            expanded = expand_head(local, r, label)
            assert abs(sum(v for _, v in expanded) - float(marginals[i])) <= TOL * max(
                1.0, float(r.pairs.abs().sum())
            )
    with pytest.raises(ClewError, match="not a head piece"):
        expand_head(local, r, "L0/F1@2")

"""The Transcoder class: activations, encoders, decoders (PLT and CLT), skip paths, checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clew.dictionaries import Transcoder, TranscoderConfig
from clew.dictionaries.activations import canonical_activation, topk
from clew.errors import ClewError

D, F = 8, 12


def random_transcoder(seed: int = 0, **cfg_fields) -> Transcoder:
    threshold = cfg_fields.pop("_threshold", None)
    fields = {"n_layers": 3, "d_model": D, "n_features": F, **cfg_fields}
    tc = Transcoder(TranscoderConfig(**fields), threshold=threshold)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        if tc.threshold is not None:
            tc.threshold.copy_(torch.rand(tc.threshold.shape, generator=g))
    return tc


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_relu_encoder_is_affine_then_relu():
    tc = random_transcoder(activation="relu")
    x = torch.randn(2, 5, D)
    for layer in range(3):
        want = torch.relu(x @ tc.W_enc[layer].T + tc.b_enc[layer])
        assert torch.allclose(tc.encode(layer, x), want, atol=1e-6)
        assert torch.allclose(
            tc.pre_activations(layer, x), x @ tc.W_enc[layer].T + tc.b_enc[layer], atol=1e-6
        )


def test_jumprelu_keeps_values_above_threshold_only():
    tc = random_transcoder(activation="jumprelu")
    pre = torch.randn(4, F) * 2
    acts = tc.activate(1, pre)
    thr = tc.threshold[1]
    for t in range(4):
        for f in range(F):
            want = pre[t, f].item() if pre[t, f] > thr[f] else 0.0
            assert acts[t, f].item() == want


def test_topk_keeps_k_largest_of_relu():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5, 5.0], [-1.0, -2.0, 0.25, -4.0, -0.1]])
    out = topk(pre, 2)
    assert out.tolist() == [[3.0, 0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.25, 0.0, 0.0]]
    tc = random_transcoder(activation="topk", k=3)
    acts = tc.encode(0, torch.randn(7, D))
    assert ((acts != 0).sum(-1) <= 3).all() and (acts >= 0).all()


def test_batchtopk_is_jumprelu_with_a_threshold_else_topk():
    with_thr = random_transcoder(activation="batchtopk", k=2, _threshold=True)
    pre = torch.randn(6, F)
    assert torch.equal(with_thr.activate(2, pre), pre * (pre > with_thr.threshold[2]))
    without = random_transcoder(activation="batchtopk", k=2)
    assert without.threshold is None
    assert torch.equal(without.activate(2, pre), topk(pre, 2))


@pytest.mark.parametrize(
    "fields",
    [
        {"activation": "relu"},
        {"activation": "jumprelu"},
        {"activation": "topk", "k": 3},
        {"activation": "batchtopk", "k": 2, "_threshold": True},
        {"activation": "batchtopk", "k": 2},
    ],
)
def test_encode_in_place_equals_the_nonlinearity_and_autograd_still_flows(fields):
    """Outside autograd ``encode`` applies a threshold or ReLU in place; the values are those of
    ``activate`` on the pre-activations, with and without grad, and gradients still reach the encoder."""
    tc = random_transcoder(**dict(fields))
    x = torch.randn(3, 5, D)
    for layer in range(3):
        want = tc.activate(layer, tc.pre_activations(layer, x))
        with torch.no_grad():
            assert torch.equal(tc.encode(layer, x), want)
        got = tc.encode(layer, x)
        assert torch.equal(got, want)
        assert got.requires_grad
        got.sum().backward()
        assert tc.W_enc.grad is not None and tc.W_enc.grad[layer].abs().sum() > 0
        tc.zero_grad()
    threshold = tc.active_threshold(0)
    kind = fields["activation"]
    assert (threshold is not None) == (kind == "jumprelu" or "_threshold" in fields)


def test_activation_names_of_other_tools():
    assert canonical_activation("jump_relu", "x") == "jumprelu"
    assert canonical_activation("JumpReLU", "x") == "jumprelu"
    assert canonical_activation("top_k", "x") == "topk"
    assert canonical_activation("BatchTopK", "x") == "batchtopk"
    with pytest.raises(ClewError) as err:
        canonical_activation("gelu", "cfg.json: activation")
    assert "cfg.json: activation" in one_line(err) and "gelu" in str(err.value)


def test_plt_decode_and_decoder_vectors():
    tc = random_transcoder()
    acts = torch.relu(torch.randn(2, 4, F))
    acts[..., :5] = 0  # some features never active
    for layer in range(3):
        want = acts @ tc.W_dec[layer] + tc.b_dec[layer]
        assert torch.allclose(tc.decode({layer: acts}, layer), want, atol=1e-5)
        idx = torch.tensor([3, 0, 7])
        assert torch.equal(tc.decoder_vectors(layer, idx, layer), tc.W_dec[layer][idx])
        assert torch.equal(tc.encoder_vectors(layer, idx), tc.W_enc[layer][idx])
        assert torch.equal(tc.decoder_bias(layer), tc.b_dec[layer])
    # a PLT ignores other layers' activations
    assert torch.allclose(tc.decode({0: acts, 1: acts}, 1), acts @ tc.W_dec[1] + tc.b_dec[1], atol=1e-5)
    with pytest.raises(ClewError) as err:
        tc.decoder_vectors(0, torch.tensor([1]), 1)
    assert "do not write to layer 1" in one_line(err)


def test_clt_decode_sums_every_earlier_layer():
    tc = random_transcoder(kind="clt")
    assert [tuple(w.shape) for w in tc.W_dec] == [(F, 3, D), (F, 2, D), (F, 1, D)]
    acts = {src: torch.relu(torch.randn(3, F)) for src in range(3)}
    for dst in range(3):
        want = tc.b_dec[dst].clone()
        for src in range(dst + 1):
            want = want + acts[src] @ tc.W_dec[src][:, dst - src]
        assert torch.allclose(tc.decode(acts, dst), want, atol=1e-5)
    idx = torch.tensor([2, 9])
    assert torch.equal(tc.decoder_vectors(0, idx, 2), tc.W_dec[0][idx, 2])
    assert torch.equal(tc.decoder_vectors(1, idx, 2), tc.W_dec[1][idx, 1])
    assert tc.dst_layers(1) == [1, 2] and tc.src_layers(1) == [0, 1]
    with pytest.raises(ClewError) as err:
        tc.decoder_vectors(2, idx, 1)
    assert "layer 2 do not write to layer 1" in one_line(err)


def test_decode_accepts_sparse_activations():
    tc = random_transcoder(kind="clt")
    acts = {src: torch.relu(torch.randn(4, F) - 1) for src in range(3)}
    sparse = {src: a.to_sparse() for src, a in acts.items()}
    assert torch.equal(tc.decode(sparse, 2), tc.decode(acts, 2))


def test_decode_with_no_active_feature_is_the_bias():
    tc = random_transcoder(kind="clt")
    out = tc.decode({0: torch.zeros(2, 3, F)}, 1)
    assert out.shape == (2, 3, D) and torch.equal(out, tc.b_dec[1].expand(2, 3, D))


def test_skip_term_and_reconstruct():
    tc = random_transcoder(skip=True)
    x = torch.randn(5, D)
    assert torch.allclose(tc.skip_term(1, x), x @ tc.W_skip[1].T, atol=1e-6)
    rec = tc.reconstruct({1: x})[1]
    want = torch.relu(x @ tc.W_enc[1].T + tc.b_enc[1]) @ tc.W_dec[1] + tc.b_dec[1] + x @ tc.W_skip[1].T
    assert torch.allclose(rec, want, atol=1e-5)
    assert random_transcoder().skip_term(0, x) is None


def test_a_subset_of_layers():
    tc = random_transcoder(n_layers=5, layers=[3, 1])
    assert tc.layers == [1, 3] and tc.W_enc.shape == (2, F, D)
    x = torch.randn(2, D)
    assert torch.allclose(tc.encode(3, x), torch.relu(x @ tc.W_enc[1].T + tc.b_enc[1]), atol=1e-6)
    with pytest.raises(ClewError) as err:
        tc.encode(2, x)
    assert "no transcoder at layer 2" in one_line(err)
    clt = random_transcoder(n_layers=5, layers=[1, 3], kind="clt")
    assert clt.dst_layers(1) == [1, 3] and clt.W_dec[0].shape == (F, 2, D)


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"activation": "gelu"}, "activation 'gelu'"),
        ({"activation": "topk"}, "needs a positive k"),
        ({"kind": "sae"}, "kind 'sae'"),
        ({"read": "resid_pre"}, "read 'resid_pre'"),
        ({"write": "resid_post"}, "write 'resid_post'"),
        ({"layers": [0, 3]}, "outside range(n_layers=3)"),
        ({"layers": []}, "non-empty"),
    ],
)
def test_bad_configs_are_one_line_errors(fields, phrase):
    with pytest.raises(ClewError) as err:
        TranscoderConfig(n_layers=3, d_model=D, n_features=F, **fields)
    assert phrase in one_line(err)


def test_check_compatible():
    tc = random_transcoder()
    tc.source = "/some/config.yaml"
    tc.check_compatible(SimpleNamespace(d_model=D, n_layers=3))
    tc.check_compatible(SimpleNamespace(d_model=D, n_layers=6))  # a PLT may cover some layers
    with pytest.raises(ClewError) as err:
        tc.check_compatible(SimpleNamespace(d_model=D + 1, n_layers=3))
    assert one_line(err).startswith("/some/config.yaml: d_model is 8")
    with pytest.raises(ClewError) as err:
        tc.check_compatible(SimpleNamespace(d_model=D, n_layers=2))
    assert "layers go up to 2" in one_line(err)
    clt = random_transcoder(kind="clt")
    with pytest.raises(ClewError) as err:
        clt.check_compatible(SimpleNamespace(d_model=D, n_layers=4))
    assert "n_layers is 3" in one_line(err)


def test_gradients_flow_for_training():
    tc = random_transcoder(kind="clt", skip=True)
    x = {layer: torch.randn(4, D) for layer in range(3)}
    loss = sum(y.pow(2).sum() for y in tc.reconstruct(x).values())
    loss.backward()
    assert all(p.grad is not None for p in (tc.W_enc, tc.b_enc, tc.b_dec, tc.W_skip, *tc.W_dec))

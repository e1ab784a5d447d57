"""ReplacementModel against clew's Transformer (random tiny Llama- and Gemma-style configurations) and
against a minimal stand-in that honours only the documented interface: ``run(tokens, record=, mlp=,
frozen=)`` returning ``.logits`` and a ``.cache`` (clew's ActivationCache), calling ``mlp(layer,
resid_mid, mlp_in)`` for layers in order and taking its output at ``mlp.write``, and
``mlp_branch(layer, mlp_in, write, frozen)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from clew.dictionaries import Transcoder, TranscoderConfig
from clew.errors import ClewError
from clew.models import ActivationCache
from clew.replacement import ReplacementModel

V, D, D_MLP, N_LAYERS, F = 23, 16, 32, 3, 40


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


@dataclass
class RunResult:
    logits: torch.Tensor
    cache: ActivationCache | None


class TinyModel:
    """A pre-norm transformer: one causal attention head and a GELU MLP per layer, an optional
    post-MLP norm as in Gemma (then "resid_delta" differs from "mlp_out")."""

    def __init__(self, post_mlp_norm: bool, seed: int = 0):
        g = torch.Generator().manual_seed(seed)

        def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * scale

        self.cfg = SimpleNamespace(n_layers=N_LAYERS, d_model=D)
        self.post_mlp_norm = post_mlp_norm
        self.embed = r(V, D)
        self.unembed = r(V, D, scale=D**-0.5)
        self.layers = [
            {
                "ln1": 1 + r(D, scale=0.1),
                "qkv": r(3, D, D, scale=D**-0.5),
                "o": r(D, D, scale=D**-0.5),
                "ln2": 1 + r(D, scale=0.1),
                "up": r(D_MLP, D, scale=D**-0.5),
                "down": r(D, D_MLP, scale=D_MLP**-0.5),
                "post": 1 + r(D, scale=0.1),
            }
            for _ in range(N_LAYERS)
        ]
        self.final_ln = 1 + r(D, scale=0.1)

    def mlp_branch(self, layer: int, mlp_in: torch.Tensor, write: str, frozen=None) -> torch.Tensor:
        w = self.layers[layer]
        out = torch.nn.functional.gelu(mlp_in @ w["up"].T) @ w["down"].T
        if write == "resid_delta" and self.post_mlp_norm:
            return rms(out, w["post"])
        return out

    def run(self, tokens: torch.Tensor, *, record: bool = False, mlp=None, frozen=None) -> RunResult:
        cache = ActivationCache()
        x = self.embed[tokens]  # [B, P, d]
        P = tokens.shape[-1]
        mask = torch.ones(P, P, dtype=torch.bool).tril()
        for layer, w in enumerate(self.layers):
            cache.resid_pre.append(x)
            q, k, v = (rms(x, w["ln1"]) @ m.T for m in w["qkv"])
            scores = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~mask, float("-inf"))
            x = x + scores.softmax(-1) @ v @ w["o"].T
            resid_mid, mlp_in = x, rms(x, w["ln2"])
            cache.resid_mid.append(resid_mid)
            cache.mlp_in.append(mlp_in)
            if mlp is None or mlp.write == "mlp_out":
                if mlp is None:
                    out = self.mlp_branch(layer, mlp_in, "mlp_out")
                else:
                    out = mlp(layer, resid_mid, mlp_in)
                delta = rms(out, w["post"]) if self.post_mlp_norm else out
            else:
                delta = out = mlp(layer, resid_mid, mlp_in)
            cache.mlp_out.append(out)
            cache.mlp_delta.append(delta)
            x = x + delta
        cache.resid_final = x
        logits = rms(x, self.final_ln) @ self.unembed.T
        return RunResult(logits, cache if record else None)


def clew_transformer(post_mlp_norm: bool):
    from clew.models.config import ModelConfig
    from clew.models.transformer import Transformer

    cfg = ModelConfig(
        family="gemma2" if post_mlp_norm else "llama",
        vocab_size=V,
        d_model=D,
        n_layers=N_LAYERS,
        n_heads=2,
        n_kv_heads=1,
        d_head=8,
        d_mlp=D_MLP,
        norm_offset=1.0 if post_mlp_norm else 0.0,
        post_attn_norm=post_mlp_norm,
        post_mlp_norm=post_mlp_norm,
        mlp_act="gelu_tanh" if post_mlp_norm else "silu",
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():  # norms away from the identity, so that their scales matter
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape))
    return model


IMPLEMENTATIONS = {"stand-in": TinyModel, "clew": clew_transformer}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_model(request):
    return lambda post_mlp_norm=False: IMPLEMENTATIONS[request.param](post_mlp_norm)


def make_transcoder(seed: int = 1, **fields) -> Transcoder:
    cfg = TranscoderConfig(n_layers=N_LAYERS, d_model=D, n_features=F, **fields)
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(tc.W_enc.shape, generator=g) * D**-0.5)
        tc.b_enc.copy_(torch.randn(tc.b_enc.shape, generator=g) * 0.3 - 0.3)
        tc.b_dec.copy_(torch.randn(tc.b_dec.shape, generator=g) * 0.1)
        for W in tc.W_dec:
            W.copy_(torch.randn(W.shape, generator=g) * 0.3)
        if tc.threshold is not None:
            tc.threshold.fill_(0.1)
        if tc.W_skip is not None:
            tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=g) * 0.1)
    return tc


TOKENS = torch.tensor([[1, 5, 7, 2, 9, 11], [3, 3, 8, 0, 22, 4]])

CASES = {
    "plt": ({}, False),
    "plt-skip-jumprelu": ({"skip": True, "activation": "jumprelu"}, False),
    "plt-topk-gemma-mlp-out": ({"activation": "topk", "k": 5}, True),
    "plt-gemma-resid-delta": ({"read": "resid_mid", "write": "resid_delta"}, True),
    "clt-gemma": ({"kind": "clt", "read": "mlp_in", "write": "resid_delta"}, True),
    "clt-skip": ({"kind": "clt", "skip": True, "read": "resid_mid"}, False),
    "plt-some-layers": ({"layers": [1]}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_reproduce_the_model_and_pure_replacement_differs(case, make_model):
    fields, post_norm = CASES[case]
    model = make_model(post_norm)
    rm = ReplacementModel(model, make_transcoder(**fields))
    base = model.run(TOKENS).logits
    with_errors = rm.forward(TOKENS, errors=True)
    assert (with_errors - base).abs().max() < 1e-5
    pure = rm.forward(TOKENS, errors=False)
    assert (pure - base).abs().max() > 1e-3
    # per-layer choice: all True is errors=True, none is errors=False
    every = rm.forward(TOKENS, errors={layer: True for layer in rm.transcoder.layers})
    assert torch.allclose(every, with_errors, atol=1e-6)
    assert torch.allclose(rm.forward(TOKENS, errors={}), pure, atol=1e-6)


def test_features_are_the_encoders_on_the_clean_cache(make_model):
    model = make_model()
    tc = make_transcoder(kind="clt")
    rm = ReplacementModel(model, tc)
    feats = rm.features(TOKENS)
    cache = model.run(TOKENS, record=True).cache
    for layer in range(N_LAYERS):
        assert feats[layer].shape == (2, 6, F)
        assert torch.equal(feats[layer], tc.encode(layer, cache.mlp_in[layer]))
    assert any((f > 0).any() for f in feats.values())


def active_feature(rm: ReplacementModel, layer: int, pos: int) -> int:
    acts = rm.features(TOKENS)[layer][0, pos]
    return int(acts.argmax())


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_interventions(kind, make_model):
    model = make_model(post_mlp_norm=True)
    rm = ReplacementModel(model, make_transcoder(kind=kind, write="resid_delta"))
    base = model.run(TOKENS).logits
    for freeze in (True, False):  # no intervention: the model itself either way
        assert (rm.intervene(TOKENS, [], freeze_errors=freeze).logits - base).abs().max() < 1e-5
    feature = active_feature(rm, 0, 2)
    result = rm.intervene(TOKENS, [(0, 2, feature, 0.0)])
    assert result.features[0][:, 2, feature].eq(0).all()
    assert (result.logits[:, 2:] - base[:, 2:]).abs().max() > 1e-4  # later positions move...
    assert torch.allclose(result.logits[:, :2], base[:, :2], atol=1e-5)  # ...earlier ones cannot
    live = rm.intervene(TOKENS, [(0, 2, feature, 0.0)], freeze_errors=False)
    assert (live.logits - result.logits).abs().max() > 1e-6  # errors move with the inputs
    # at the last layer nothing downstream can respond: frozen and live errors agree
    last = N_LAYERS - 1
    f_last = active_feature(rm, last, -1)
    frozen = rm.intervene(TOKENS, [(last, -1, f_last, 3.0)]).logits
    live = rm.intervene(TOKENS, [(last, -1, f_last, 3.0)], freeze_errors=False).logits
    assert torch.allclose(frozen, live, atol=1e-5) and (frozen - base).abs().max() > 1e-4


def test_intervention_mistakes_are_one_line_errors(make_model):
    rm = ReplacementModel(make_model(), make_transcoder(layers=[0, 2]))
    for bad, phrase in (
        ((1, 0, 0, 1.0), "no transcoder at layer 1"),
        ((0, 9, 0, 1.0), "position 9"),
        ((0, 0, F, 1.0), f"feature {F}"),
    ):
        with pytest.raises(ClewError) as err:
            rm.intervene(TOKENS, [bad])
        assert phrase in str(err.value) and "\n" not in str(err.value)


def test_live_errors_need_the_true_mlp():
    inner = TinyModel(post_mlp_norm=False)
    opaque = SimpleNamespace(cfg=inner.cfg, run=inner.run)  # the interface only: no way to its MLPs
    rm = ReplacementModel(opaque, make_transcoder())
    assert (rm.intervene(TOKENS, []).logits - inner.run(TOKENS).logits).abs().max() < 1e-5
    with pytest.raises(ClewError) as err:
        rm.intervene(TOKENS, [], freeze_errors=False)
    assert "true_mlp" in str(err.value)


def test_incompatible_transcoder_is_refused(make_model):
    cfg = TranscoderConfig(n_layers=N_LAYERS, d_model=D + 2, n_features=F)
    with pytest.raises(ClewError) as err:
        ReplacementModel(make_model(), Transcoder(cfg))
    assert "d_model is 18" in str(err.value)


def test_ce_loss_score(make_model):
    rm = ReplacementModel(make_model(), make_transcoder())
    s = rm.ce_loss_score(TOKENS)
    assert set(s) == {"clean", "spliced", "ablated", "score"}
    assert all(torch.isfinite(torch.tensor(v)) for v in s.values())

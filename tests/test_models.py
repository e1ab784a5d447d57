"""The model core against transformers' implementation, family by family, and its frozen mode."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import FAMILIES, save_hf_model

from clew.errors import ClewError
from clew.models.config import ModelConfig
from clew.models.loading import load_folder

PROMPT_LEN = 13  # longer than the sliding windows (5) of the Gemma configurations


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = save_hf_model(request.param, folder)
    ours = load_folder(folder, tokenizer=False, device="cpu")
    return request.param, hf, ours


def tokens(n: int = PROMPT_LEN, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 211, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_logits_match_transformers(pair):
    family, hf, ours = pair
    t = tokens()
    with torch.no_grad():
        ref = hf(t).logits
        got = ours(t)
        recorded = ours.run(t, record=True).logits
    assert got.shape == ref.shape == (2, PROMPT_LEN, 211)
    assert (got - ref).abs().max().item() < 1e-4, family
    assert (recorded - ref).abs().max().item() < 1e-4, family


def test_cache_holds_every_layer(pair):
    _, _, ours = pair
    cfg = ours.cfg
    with torch.no_grad():
        cache = ours.run(tokens(), record=True).cache
    assert cache is not None
    for name in ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "mlp_delta", "patterns"):
        assert len(getattr(cache, name)) == cfg.n_layers
    assert cache.patterns[0].shape == (2, cfg.n_heads, PROMPT_LEN, PROMPT_LEN)
    assert torch.allclose(cache.patterns[1].sum(-1), torch.ones(2, cfg.n_heads, PROMPT_LEN), atol=1e-5)
    # the residual bookkeeping adds up: resid_pre[l+1] = resid_mid[l] + mlp_delta[l]
    for layer in range(cfg.n_layers - 1):
        assert torch.allclose(cache.resid_pre[layer + 1], cache.resid_mid[layer] + cache.mlp_delta[layer])
    assert "final" in cache.scales and f"{cfg.n_layers - 1}.ln2" in cache.scales


@pytest.mark.parametrize("read", ["resid_mid", "mlp_in"])
@pytest.mark.parametrize("write", [None, "mlp_out", "resid_delta"])
def test_capture_reads_and_writes_what_the_full_pass_records(pair, read, write):
    """clew.models.capture stops after the last layer asked for (and then skips that layer's MLP when
    no output is wanted), yet reads and writes what a full recorded pass holds at every point."""
    from clew.models.capture import capture

    _, _, ours = pair
    t = tokens()
    layers = [0, ours.cfg.n_layers - 2]
    with torch.no_grad():
        cache = ours.run(t, record=True).cache
        inputs, outputs = capture(ours, t, layers, read, write)
    assert sorted(inputs) == layers and sorted(outputs) == ([] if write is None else layers)
    for layer in layers:
        torch.testing.assert_close(inputs[layer], cache.read(read, layer), rtol=1e-5, atol=1e-5)
        if write is not None:
            torch.testing.assert_close(outputs[layer], cache.written(write, layer), rtol=1e-5, atol=1e-5)


def test_frozen_replay_reproduces_the_forward(pair):
    _, _, ours = pair
    t = tokens()
    with torch.no_grad():
        clean = ours.run(t, record=True)
        replay = ours.run(t, frozen=clean.cache.frozen())
    assert (replay.logits - clean.logits).abs().max().item() <= 1e-6


def test_frozen_map_from_mlp_output_is_linear(pair):
    """f(a x + b y) = a f(x) + b f(y) for the map from layer 0's MLP output to the final residual."""
    _, _, ours = pair
    t = tokens(batch=1)
    with torch.no_grad():
        cache = ours.run(t, record=True).cache
    frozen = cache.frozen()

    def f(delta: torch.Tensor) -> torch.Tensor:
        """The part of the final residual that depends on an added vector at layer 0's MLP output."""
        resid = cache.resid_mid[0] + delta

        class NoMLP:
            write = "resid_delta"

            def __call__(self, layer, resid_mid, mlp_in):
                return torch.zeros_like(resid_mid)

        with torch.no_grad():
            out = ours.run_layers(resid, 1, ours.cfg.n_layers, frozen=frozen, mlp=NoMLP())
            base = ours.run_layers(cache.resid_mid[0], 1, ours.cfg.n_layers, frozen=frozen, mlp=NoMLP())
        return out - base

    g = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(cache.resid_mid[0].shape, generator=g),
        torch.randn(cache.resid_mid[0].shape, generator=g),
    )
    a, b = 0.7, -1.3
    lhs, rhs = f(a * x + b * y), a * f(x) + b * f(y)
    assert (lhs - rhs).abs().max().item() < 1e-4 * max(1.0, rhs.abs().max().item())
    # and it is not trivially zero
    assert f(x).abs().max().item() > 1e-3


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ClewError, match="supported: llama"):
        ModelConfig.from_hf({"model_type": "mamba"}, source="x/config.json")


def test_missing_tensor_names_file_and_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    save_hf_model("llama", tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ClewError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_folder(tmp_path, tokenizer=False)


def test_truncated_weight_file_names_the_file(tmp_path):
    save_hf_model("qwen2", tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ClewError, match="model.safetensors"):
        load_folder(tmp_path, tokenizer=False)


def test_bfloat16_runs_close_to_float32(tmp_path):
    save_hf_model("llama", tmp_path)
    f32 = load_folder(tmp_path, tokenizer=False)
    bf16 = load_folder(tmp_path, tokenizer=False, dtype=torch.bfloat16)
    t = tokens()
    with torch.no_grad():
        a, b = f32(t), bf16(t).float()
    assert b.dtype == torch.float32 and (a - b).abs().max().item() < 0.1 * a.abs().max().item()

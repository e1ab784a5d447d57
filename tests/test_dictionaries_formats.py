"""Every file layout: fixtures written by the test in the tool's own layout (keys and shapes as the tool
documents them), activations checked against a hand computation, round trips through clew's writer,
lazy against eager decoders, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import clew.cli
from clew.dictionaries import Transcoder, TranscoderConfig, load_transcoder, save_transcoder
from clew.errors import ClewError

D, F, L = 8, 16, 3


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def x_in(seed: int = 99) -> torch.Tensor:
    return rand(2, 5, D, seed=seed)  # [B, P, d]


def jump(pre: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return pre * (pre > thr)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def assert_same(a: Transcoder, b: Transcoder, x: torch.Tensor, *, same_config: bool = True) -> None:
    """Bitwise-equal encoders, decoders and skip paths, and (unless told otherwise) the same configuration."""
    if same_config:
        assert a.cfg.to_dict() == b.cfg.to_dict()
    for layer in a.layers:
        acts_a, acts_b = a.encode(layer, x), b.encode(layer, x)
        assert torch.equal(acts_a, acts_b)
        for dst in a.dst_layers(layer):
            assert torch.equal(a.decoder_weights(layer, dst), b.decoder_weights(layer, dst))
        acts = {src: a.encode(src, x) for src in a.src_layers(layer)}
        assert torch.equal(a.decode(acts, layer), b.decode(acts, layer))
        sa, sb = a.skip_term(layer, x), b.skip_term(layer, x)
        assert (sa is None and sb is None) or torch.equal(sa, sb)


def check_lazy_equals_eager(path: Path) -> None:
    lazy, eager = load_transcoder(path, lazy=True), load_transcoder(path, lazy=False)
    assert lazy.lazy and not eager.lazy
    assert_same(lazy, eager, x_in())
    idx = torch.tensor([5, 0, 5, 15])
    for src in lazy.layers:
        for dst in lazy.dst_layers(src):
            assert torch.equal(lazy.decoder_vectors(src, idx, dst), eager.decoder_vectors(src, idx, dst))


def round_trip(tc: Transcoder, tmp_path: Path) -> Transcoder:
    out = tmp_path / "clew_copy"
    save_transcoder(tc, out)
    back = load_transcoder(out, lazy=True)
    assert_same(tc, back, x_in())
    assert_same(tc, load_transcoder(out, lazy=False), x_in())
    return back


# ----- circuit-tracer, per-layer -------------------------------------------------------------------


def write_ct_plt(
    folder: Path, *, threshold: bool, skip: bool, activation: str | None = None, **config
) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for i in range(L):
        w = {
            "W_enc": rand(F, D, seed=10 * i),
            "W_dec": rand(F, D, seed=10 * i + 1),
            "b_enc": rand(F, seed=10 * i + 2),
            "b_dec": rand(D, seed=10 * i + 3),
        }
        if threshold:
            w["activation_function.threshold"] = rand(F, seed=10 * i + 4).abs()
        if skip:
            w["W_skip"] = rand(D, D, seed=10 * i + 5)
        save_file(w, str(folder / f"layer_{i}.safetensors"))
        weights[i] = w
    cfg = {
        "model_name": "org/tiny",
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        **config,
    }
    if activation:
        cfg["activation"] = activation
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return weights


def test_circuit_tracer_plt_jumprelu_skip(tmp_path):
    w = write_ct_plt(tmp_path / "ct", threshold=True, skip=True)
    tc = load_transcoder(tmp_path / "ct")
    c = tc.cfg
    assert (c.kind, c.activation, c.read, c.write, c.skip, c.model_name) == (
        "plt",
        "jumprelu",
        "mlp_in",
        "resid_delta",
        True,
        "org/tiny",
    )
    x = x_in()
    for i in range(L):
        pre = x @ w[i]["W_enc"].T + w[i]["b_enc"]
        acts = jump(pre, w[i]["activation_function.threshold"])
        assert torch.allclose(tc.encode(i, x), acts, atol=1e-6)
        want = acts @ w[i]["W_dec"] + w[i]["b_dec"]
        assert torch.allclose(tc.decode({i: acts}, i), want, atol=1e-5)
        assert torch.allclose(tc.skip_term(i, x), x @ w[i]["W_skip"].T, atol=1e-5)
    check_lazy_equals_eager(tmp_path / "ct")
    round_trip(tc, tmp_path)


def test_circuit_tracer_plt_relu_and_topk(tmp_path):
    w = write_ct_plt(tmp_path / "relu", threshold=False, skip=False, activation="relu")
    tc = load_transcoder(tmp_path / "relu" / "config.yaml")
    x = x_in()
    assert torch.allclose(tc.encode(1, x), torch.relu(x @ w[1]["W_enc"].T + w[1]["b_enc"]), atol=1e-6)
    write_ct_plt(tmp_path / "topk", threshold=False, skip=False, activation="topk", k=3)
    tk = load_transcoder(tmp_path / "topk")
    assert (tk.cfg.activation, tk.cfg.k) == ("topk", 3)
    acts = tk.encode(0, x)
    pre = torch.relu(x @ w[0]["W_enc"].T + w[0]["b_enc"])
    kth = pre.topk(3, dim=-1).values[..., -1:]
    assert torch.equal(acts, pre * (pre >= kth))
    round_trip(tk, tmp_path)


@pytest.mark.parametrize(
    ("hook_in", "hook_out", "read", "write"),
    [
        ("hook_resid_mid", "hook_mlp_out", "resid_mid", "resid_delta"),
        ("mlp.hook_in", "mlp.hook_out", "mlp_in", "mlp_out"),
        ("ln2.hook_normalized", "mlp.hook_out", "mlp_in", "mlp_out"),
    ],
)
def test_circuit_tracer_hook_names(tmp_path, hook_in, hook_out, read, write):
    write_ct_plt(
        tmp_path, threshold=False, skip=False, feature_input_hook=hook_in, feature_output_hook=hook_out
    )
    tc = load_transcoder(tmp_path)
    assert (tc.cfg.read, tc.cfg.write) == (read, write)


def test_circuit_tracer_transcoders_list_with_hf_entries(tmp_path, monkeypatch):
    """A ``transcoders`` list maps entry i to layer i; hf:// entries go through huggingface_hub."""
    hub = tmp_path / "hub"
    write_ct_plt(hub / "files", threshold=True, skip=False)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return str(hub)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = tmp_path / "cfg"
    folder.mkdir()
    entries = [f"hf://org/repo/files/layer_{i}.safetensors" for i in range(L)]
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "mlp.hook_out",
                "transcoders": entries,
            }
        )
    )
    tc = load_transcoder(folder)
    assert tc.layers == [0, 1, 2] and tc.cfg.activation == "jumprelu"
    assert calls[0][0] == "org/repo" and "files/layer_0.safetensors" in calls[0][2]
    # a whole folder from the hub
    whole = load_transcoder("hf://org/repo/files@v1")
    assert calls[-1][:2] == ("org/repo", "v1")
    load_transcoder("hf://org/repo/files?revision=v2")
    assert calls[-1][:2] == ("org/repo", "v2")
    assert_same(tc, whole, x_in(), same_config=False)


def test_hub_failure_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("no network\nmore details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ClewError) as err:
        load_transcoder("hf://org/repo/sub")
    assert one_line(err) == "hf://org/repo/sub: download failed (no network)"


# ----- circuit-tracer, cross-layer ------------------------------------------------------------------


def write_ct_clt(folder: Path, *, threshold: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for i in range(L):
        enc = {
            f"W_enc_{i}": rand(F, D, seed=20 * i),
            f"b_enc_{i}": rand(F, seed=20 * i + 1),
            f"b_dec_{i}": rand(D, seed=20 * i + 2),
        }
        if threshold:
            enc[f"threshold_{i}"] = rand(F, seed=20 * i + 3).abs()
        dec = {f"W_dec_{i}": rand(F, L - i, D, seed=20 * i + 4)}
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file(dec, str(folder / f"W_dec_{i}.safetensors"))
        weights[i] = {**enc, **dec}
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "cross_layer_transcoder",
                "feature_input_hook": "hook_resid_mid",
                "feature_output_hook": "hook_mlp_out",
            }
        )
    )
    return weights


def test_circuit_tracer_clt(tmp_path):
    w = write_ct_clt(tmp_path / "clt", threshold=True)
    tc = load_transcoder(tmp_path / "clt")
    assert (tc.cfg.kind, tc.cfg.activation, tc.cfg.read, tc.cfg.n_layers) == (
        "clt",
        "jumprelu",
        "resid_mid",
        L,
    )
    x = x_in()
    acts = {}
    for i in range(L):
        pre = x @ w[i][f"W_enc_{i}"].T + w[i][f"b_enc_{i}"]
        acts[i] = jump(pre, w[i][f"threshold_{i}"])
        assert torch.allclose(tc.encode(i, x), acts[i], atol=1e-6)
    for dst in range(L):
        want = w[dst][f"b_dec_{dst}"].clone()
        for src in range(dst + 1):
            want = want + acts[src] @ w[src][f"W_dec_{src}"][:, dst - src]
        assert torch.allclose(tc.decode(acts, dst), want, atol=1e-5)
    idx = torch.tensor([1, 4])
    assert torch.equal(tc.decoder_vectors(0, idx, 2), w[0]["W_dec_0"][idx, 2])
    check_lazy_equals_eager(tmp_path / "clt")
    round_trip(tc, tmp_path)


def test_clt_with_skip_and_subset_of_layers_round_trips(tmp_path):
    cfg = TranscoderConfig(n_layers=4, d_model=D, n_features=F, kind="clt", skip=True, layers=[1, 3])
    tc = Transcoder(cfg)
    with torch.no_grad():
        for k, p in enumerate(tc.parameters()):
            p.copy_(rand(*p.shape, seed=k))
    tc.cfg.extra = {"fvu": 0.1, "note": "x"}
    back = round_trip(tc, tmp_path)
    assert back.cfg.extra == {"fvu": 0.1, "note": "x"} and back.cfg.layers == [1, 3]


@pytest.mark.parametrize("threshold", [True, False])
def test_batchtopk_round_trips_and_reads_as_its_inference_form(tmp_path, threshold):
    cfg = TranscoderConfig(n_layers=2, d_model=D, n_features=F, activation="batchtopk", k=4)
    tc = Transcoder(cfg, threshold=threshold)
    with torch.no_grad():
        for k, p in enumerate(tc.parameters()):
            p.copy_(rand(*p.shape, seed=k))
    back = round_trip(tc, tmp_path)
    assert back.cfg.activation == "batchtopk" and (back.threshold is not None) == threshold
    config = yaml.safe_load((tmp_path / "clew_copy" / "config.yaml").read_text())
    assert config["activation"] == ("jumprelu" if threshold else "topk")  # what circuit-tracer understands


# ----- Gemma Scope 1 -------------------------------------------------------------------------------


def write_gs1(root: Path) -> dict:
    weights = {}
    for i in range(L):
        folder = root / f"layer_{i}" / "width_16k" / f"average_l0_{50 + i}"
        folder.mkdir(parents=True)
        w = {
            "W_enc": rand(D, F, seed=30 * i).numpy(),  # [d_model, d_sae]
            "W_dec": rand(F, D, seed=30 * i + 1).numpy(),
            "b_enc": rand(F, seed=30 * i + 2).numpy(),
            "b_dec": rand(D, seed=30 * i + 3).numpy(),
            "threshold": rand(F, seed=30 * i + 4).abs().numpy(),
        }
        np.savez(folder / "params.npz", **w)
        weights[i] = {k: torch.from_numpy(v) for k, v in w.items()}
    return weights


def test_gemma_scope_1(tmp_path):
    w = write_gs1(tmp_path / "gs1")
    tc = load_transcoder(tmp_path / "gs1")
    c = tc.cfg
    assert (c.kind, c.activation, c.read, c.write, tc.layers) == (
        "plt",
        "jumprelu",
        "mlp_in",
        "resid_delta",
        [0, 1, 2],
    )
    assert not tc.lazy  # .npz decoders are read in full
    x = x_in()
    for i in range(L):
        acts = jump(x @ w[i]["W_enc"] + w[i]["b_enc"], w[i]["threshold"])
        assert torch.allclose(tc.encode(i, x), acts, atol=1e-6)
        assert torch.allclose(tc.decode({i: acts}, i), acts @ w[i]["W_dec"] + w[i]["b_dec"], atol=1e-5)
    single = load_transcoder(tmp_path / "gs1" / "layer_2" / "width_16k" / "average_l0_52" / "params.npz")
    assert single.layers == [2] and torch.equal(single.W_enc[0], tc.W_enc[2])
    round_trip(tc, tmp_path)


def test_gemma_scope_1_two_widths_for_a_layer_is_ambiguous(tmp_path):
    write_gs1(tmp_path)
    extra = tmp_path / "layer_1" / "width_16k" / "average_l0_9"
    extra.mkdir(parents=True)
    (extra / "params.npz").write_bytes(
        (tmp_path / "layer_0" / "width_16k" / "average_l0_50" / "params.npz").read_bytes()
    )
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert "a second dictionary for layer 1" in one_line(err)


# ----- Gemma Scope 2 -------------------------------------------------------------------------------


def write_gs2_plt(root: Path) -> dict:
    weights = {}
    for i in range(L):
        folder = root / f"layer_{i}_width_16k_l0_small_affine"
        folder.mkdir(parents=True)
        w = {
            "w_enc": rand(D, F, seed=40 * i),  # [d_in, d_sae]
            "w_dec": rand(F, D, seed=40 * i + 1),
            "b_enc": rand(F, seed=40 * i + 2),
            "b_dec": rand(D, seed=40 * i + 3),
            "threshold": rand(F, seed=40 * i + 4).abs(),
            "affine_skip_connection": rand(D, D, seed=40 * i + 5),
        }
        save_file(w, str(folder / "params.safetensors"))
        config = {
            "hf_hook_point_in": f"model.layers.{i}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{i}.post_feedforward_layernorm.output",
            "width": F,
            "model_name": "google/gemma-3-270m",
            "architecture": "jump_relu",
            "l0": 18,
            "affine_connection": True,
            "type": "transcoder",
        }
        (folder / "config.json").write_text(json.dumps(config))
        weights[i] = w
    return weights


def test_gemma_scope_2_affine_transcoders(tmp_path):
    w = write_gs2_plt(tmp_path / "transcoder")
    tc = load_transcoder(tmp_path / "transcoder")
    c = tc.cfg
    assert (c.kind, c.activation, c.read, c.write, c.skip) == (
        "plt",
        "jumprelu",
        "mlp_in",
        "resid_delta",
        True,
    )
    assert c.model_name == "google/gemma-3-270m" and c.extra["l0"] == 18
    x = x_in()
    for i in range(L):
        acts = jump(x @ w[i]["w_enc"] + w[i]["b_enc"], w[i]["threshold"])
        assert torch.allclose(tc.encode(i, x), acts, atol=1e-6)
        assert torch.allclose(tc.decode({i: acts}, i), acts @ w[i]["w_dec"] + w[i]["b_dec"], atol=1e-5)
        assert torch.allclose(tc.skip_term(i, x), x @ w[i]["affine_skip_connection"], atol=1e-5)
    check_lazy_equals_eager(tmp_path / "transcoder")
    round_trip(tc, tmp_path)


def test_gemma_scope_2_clt(tmp_path):
    folder = tmp_path / "clt" / "width_262k_l0_medium"
    folder.mkdir(parents=True)
    w = {}
    for i in range(L):
        w[i] = {
            "w_enc": rand(D, F, seed=50 * i),
            "w_dec": rand(F, L, D, seed=50 * i + 1),  # [d_sae, n_layers, d_in]; slots below i unused
            "b_enc": rand(F, seed=50 * i + 2),
            "b_dec": rand(D, seed=50 * i + 3),
            "threshold": rand(F, seed=50 * i + 4).abs(),
        }
        save_file(w[i], str(folder / f"params_layer_{i}.safetensors"))
    tc = load_transcoder(tmp_path / "clt")
    assert (tc.cfg.kind, tc.cfg.n_layers) == ("clt", L)
    x = x_in()
    acts = {i: jump(x @ w[i]["w_enc"] + w[i]["b_enc"], w[i]["threshold"]) for i in range(L)}
    for dst in range(L):
        want = w[dst]["b_dec"] + sum(acts[src] @ w[src]["w_dec"][:, dst] for src in range(dst + 1))
        assert torch.allclose(tc.decode(acts, dst), want, atol=1e-5)
    check_lazy_equals_eager(tmp_path / "clt")
    back = round_trip(tc, tmp_path)
    assert back.W_dec is None and load_transcoder(tmp_path / "clew_copy", lazy=False).W_dec[0].shape == (
        F,
        L,
        D,
    )


# ----- sparsify ------------------------------------------------------------------------------------


def write_sparsify(root: Path, *, k: int = 3) -> dict:
    weights = {}
    for i in range(L):
        folder = root / f"layers.{i}.mlp"
        folder.mkdir(parents=True)
        w = {
            "encoder.weight": rand(F, D, seed=60 * i),  # [num_latents, d_in]
            "encoder.bias": rand(F, seed=60 * i + 1),
            "W_dec": rand(F, D, seed=60 * i + 2),
            "b_dec": rand(D, seed=60 * i + 3),
            "W_skip": rand(D, D, seed=60 * i + 4),
        }
        save_file(w, str(folder / "sae.safetensors"))
        cfg = {
            "activation": "topk",
            "expansion_factor": 2,
            "normalize_decoder": True,
            "num_latents": F,
            "k": k,
            "multi_topk": False,
            "skip_connection": True,
            "transcode": True,
            "d_in": D,
        }
        (folder / "cfg.json").write_text(json.dumps(cfg))
        weights[i] = w
    return weights


def test_sparsify_skip_transcoder(tmp_path):
    w = write_sparsify(tmp_path / "sp")
    tc = load_transcoder(tmp_path / "sp")
    c = tc.cfg
    assert (c.activation, c.k, c.read, c.write, c.skip) == ("topk", 3, "mlp_in", "mlp_out", True)
    x = x_in()
    for i in range(L):
        pre = torch.relu(x @ w[i]["encoder.weight"].T + w[i]["encoder.bias"])
        top = pre.topk(3, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        assert torch.allclose(tc.encode(i, x), acts, atol=1e-6)
        want = acts @ w[i]["W_dec"] + w[i]["b_dec"] + x @ w[i]["W_skip"].T
        assert torch.allclose(tc.decode({i: acts}, i) + tc.skip_term(i, x), want, atol=1e-5)
    check_lazy_equals_eager(tmp_path / "sp")
    round_trip(tc, tmp_path)


def test_sparsify_autoencoder_is_refused(tmp_path):
    write_sparsify(tmp_path)
    cfg_path = tmp_path / "layers.1.mlp" / "cfg.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "transcode": False}))
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert one_line(err).startswith(f"{cfg_path}: transcode is false")


# ----- SAELens -------------------------------------------------------------------------------------


def write_saelens(root: Path) -> dict:
    weights = {}
    for i in range(L):
        folder = root / f"blocks.{i}.ln2.hook_normalized"
        folder.mkdir(parents=True)
        w = {
            "W_enc": rand(D, F, seed=70 * i),  # [d_in, d_sae]
            "W_dec": rand(F, D, seed=70 * i + 1),
            "b_enc": rand(F, seed=70 * i + 2),
            "b_dec": rand(D, seed=70 * i + 3),
            "threshold": rand(F, seed=70 * i + 4).abs(),
            "W_skip": rand(D, D, seed=70 * i + 5),  # [d_out, d_in]
        }
        save_file(w, str(folder / "sae_weights.safetensors"))
        cfg = {
            "architecture": "jumprelu_skip_transcoder",
            "d_in": D,
            "d_sae": F,
            "d_out": D,
            "dtype": "float32",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "metadata": {
                "model_name": "gpt2",
                "hook_name": f"blocks.{i}.ln2.hook_normalized",
                "hook_name_out": f"blocks.{i}.hook_mlp_out",
            },
        }
        (folder / "cfg.json").write_text(json.dumps(cfg))
        weights[i] = w
    return weights


def test_saelens_jumprelu_skip_transcoder(tmp_path):
    w = write_saelens(tmp_path / "sl")
    tc = load_transcoder(tmp_path / "sl")
    c = tc.cfg
    assert (c.activation, c.read, c.write, c.skip, c.model_name) == (
        "jumprelu",
        "mlp_in",
        "resid_delta",
        True,
        "gpt2",
    )
    x = x_in()
    for i in range(L):
        acts = jump(x @ w[i]["W_enc"] + w[i]["b_enc"], w[i]["threshold"])
        assert torch.allclose(tc.encode(i, x), acts, atol=1e-6)
        assert torch.allclose(tc.decode({i: acts}, i), acts @ w[i]["W_dec"] + w[i]["b_dec"], atol=1e-5)
        assert torch.allclose(tc.skip_term(i, x), x @ w[i]["W_skip"].T, atol=1e-5)
    check_lazy_equals_eager(tmp_path / "sl")
    round_trip(tc, tmp_path)


def test_saelens_sae_without_output_hook_is_refused(tmp_path):
    write_saelens(tmp_path)
    cfg_path = tmp_path / "blocks.0.ln2.hook_normalized" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["hook_name_out"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path / "blocks.0.ln2.hook_normalized")
    assert "no hook_name_out" in one_line(err)


# ----- errors --------------------------------------------------------------------------------------


def test_missing_layer_files(tmp_path):
    write_ct_plt(tmp_path / "plt", threshold=False, skip=False)
    (tmp_path / "plt" / "layer_1.safetensors").unlink()
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path / "plt")
    assert one_line(err) == f"{tmp_path / 'plt' / 'layer_1.safetensors'}: missing layer file"
    write_ct_clt(tmp_path / "clt", threshold=False)
    (tmp_path / "clt" / "W_dec_2.safetensors").unlink()
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path / "clt")
    assert one_line(err) == f"{tmp_path / 'clt' / 'W_dec_2.safetensors'}: missing layer file"


def test_nan_in_a_weight(tmp_path):
    write_ct_plt(tmp_path, threshold=False, skip=False)
    w = {
        "W_enc": rand(F, D, seed=0),
        "W_dec": rand(F, D, seed=1),
        "b_enc": rand(F, seed=2),
        "b_dec": rand(D, seed=3),
    }
    w["b_enc"][3] = float("nan")
    save_file(w, str(tmp_path / "layer_2.safetensors"))
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert one_line(err) == f"{tmp_path / 'layer_2.safetensors'}: b_enc contains NaN or infinite values"
    w["b_enc"][3] = 0.0
    w["W_dec"][7, 1] = float("inf")
    save_file(w, str(tmp_path / "layer_2.safetensors"))
    with pytest.raises(ClewError) as err:  # eager: found when loading
        load_transcoder(tmp_path, lazy=False)
    assert "layer_2.safetensors: W_dec contains NaN" in one_line(err)
    lazy = load_transcoder(tmp_path, lazy=True)  # lazy: found when the row is read
    lazy.decoder_vectors(2, torch.tensor([0, 1]), 2)
    with pytest.raises(ClewError) as err:
        lazy.decoder_vectors(2, torch.tensor([7]), 2)
    assert "layer_2.safetensors: W_dec contains NaN" in one_line(err)


def test_unknown_activation_and_hook(tmp_path):
    write_ct_plt(tmp_path, threshold=False, skip=False, activation="gelu")
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert one_line(err).startswith(f"{tmp_path / 'config.yaml'}: activation: unknown activation 'gelu'")
    write_ct_plt(tmp_path, threshold=False, skip=False, feature_input_hook="hook_resid_pre")
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert one_line(err).startswith(f"{tmp_path / 'config.yaml'}: feature_input_hook: unknown read hook")
    write_ct_plt(tmp_path, threshold=False, skip=False, feature_output_hook="hook_resid_post")
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert "feature_output_hook: unknown write hook 'hook_resid_post'" in one_line(err)


def test_width_mismatch_with_the_model(tmp_path):
    from types import SimpleNamespace

    write_ct_plt(tmp_path, threshold=False, skip=False)
    tc = load_transcoder(tmp_path)
    with pytest.raises(ClewError) as err:
        tc.check_compatible(SimpleNamespace(d_model=2 * D, n_layers=L))
    assert one_line(err).startswith(f"{tmp_path / 'config.yaml'}: d_model is {D}")


def test_inconsistent_layers(tmp_path):
    write_ct_plt(tmp_path, threshold=False, skip=False)
    w = {"W_enc": rand(F + 1, D, seed=0), "W_dec": rand(F + 1, D, seed=1)}
    save_file(
        {**w, "b_enc": rand(F + 1, seed=2), "b_dec": rand(D, seed=3)}, str(tmp_path / "layer_1.safetensors")
    )
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert "layer_1.safetensors: encoder of layer 1 has shape (17, 8), expected (16, 8)" in one_line(err)


def test_nothing_recognisable(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path)
    assert "no dictionary of a known layout" in one_line(err)
    with pytest.raises(ClewError) as err:
        load_transcoder(tmp_path / "absent")
    assert "no such file or folder" in one_line(err)


# ----- clew convert ---------------------------------------------------------------------------------


def test_convert_command(tmp_path, capsys):
    write_sparsify(tmp_path / "sp")
    assert clew.cli.main(["convert", str(tmp_path / "sp"), str(tmp_path / "out")]) == 0
    assert "wrote PLT" in capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set" and config["activation"] == "topk" and config["k"] == 3
    assert config["clew"]["read"] == "mlp_in" and config["clew"]["write"] == "mlp_out"
    assert_same(load_transcoder(tmp_path / "sp"), load_transcoder(tmp_path / "out"), x_in())
    assert clew.cli.main(["convert", str(tmp_path / "sp"), str(tmp_path / "out")]) == 2  # would overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert clew.cli.main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 2


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_16_bit_dictionaries_are_upcast_on_a_cpu_unless_asked(tmp_path, half):
    w = write_ct_clt(tmp_path / "src", threshold=True)
    tc = load_transcoder(tmp_path / "src")
    tc.to(dtype=half)  # stored in 16 bits, as many published dictionaries are
    save_transcoder(tc, tmp_path / "half")
    for lazy in (True, False):
        up = load_transcoder(tmp_path / "half", lazy=lazy)
        assert up.dtype == torch.float32 and up.W_enc.dtype == torch.float32
        idx = torch.tensor([1, 4])
        rows = up.decoder_vectors(0, idx, 2)
        assert rows.dtype == torch.float32  # the values stored, in float32: nothing lost, nothing made up
        assert torch.equal(rows, w[0]["W_dec_0"][idx, 2].to(half).float())
        assert torch.equal(up.W_enc[0], w[0]["W_enc_0"].to(half).float())
    assert load_transcoder(tmp_path / "half", dtype=half).dtype == half  # asked for: kept

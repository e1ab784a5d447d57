"""GGUF checkpoint -> plain Hugging Face folder (config.json, float32 model.safetensors, tokenizer files).

The weights are read and dequantised with the ``gguf`` package (``gguf.quants.dequantize``), renamed to
the Hugging Face names of the architecture and undone from llama.cpp's storage conventions (the
rotary permutation of Llama's query/key rows, Gemma's ``1 + w`` norm weights, GPT-2's transposed
Conv1D weights). The config is rebuilt from the metadata, filling in what llama.cpp hardcodes instead
of storing (Gemma's sliding-window pattern, local rotary base and query scale). The tokenizer is built by
transformers' own GGUF tokenizer support and saved as ``tokenizer.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clew.errors import ClewError

CONVERTER_VERSION = 2
"""Bumped whenever the conversion's output changes, so that cached conversions are redone."""

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2")
SUPPORTED_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

_MODEL_TYPE = {"gemma3": "gemma3_text"}
_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
# GGUF block tensor -> Hugging Face module, inside ``model.layers.N.`` (``transformer.h.N.`` for GPT-2).
_DECODER_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GEMMA_BLOCK = {
    **_DECODER_BLOCK,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GPT2_BLOCK = {
    "attn_norm": "ln_1",
    "attn_qkv": "attn.c_attn",
    "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
_DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GPT2_TOP = {
    "token_embd": "transformer.wte",
    "position_embd": "transformer.wpe",
    "output_norm": "transformer.ln_f",
    "output": "lm_head",
}


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


class _Gguf:
    """The parsed file: metadata lookups with errors that name the file and the field."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader

        self.path = path
        try:
            self.reader = GGUFReader(path)
        except Exception as err:  # gguf raises ValueError/struct.error for a damaged or foreign file
            raise ClewError(f"{path}: not a readable GGUF file ({_first_line(err)})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = str(self.get("general.architecture"))

    def get(self, key: str, default: Any = ...) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if default is ...:
                raise ClewError(f"{self.path}: metadata field {key} is missing")
            return default
        value = field.contents()
        # Metadata floats are float32: keep their shortest spelling (1e-05, not 9.999999747378752e-06).
        return float(str(np.float32(value))) if isinstance(value, float) else value

    def hp(self, key: str, default: Any = ...) -> Any:
        """An architecture hyperparameter, ``<arch>.<key>``."""
        return self.get(f"{self.arch}.{key}", default)

    def rows(self, tensor: str) -> int:
        return int(self.tensors[tensor].shape[-1])  # GGUF lists dimensions innermost first


def check_supported(g: _Gguf) -> None:
    """Refuse, before any heavy work, a file whose architecture or tensor types clew cannot convert."""
    if g.arch not in SUPPORTED_ARCHITECTURES:
        raise ClewError(
            f"{g.path}: architecture {g.arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    for t in g.reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise ClewError(
                f"{g.path}: tensor {t.name} has quantisation type {t.tensor_type.name}, which is not supported "
                f"(supported: {', '.join(SUPPORTED_TYPES)})"
            )
    if "token_embd.weight" not in g.tensors:
        raise ClewError(f"{g.path}: tensor token_embd.weight (the token embedding) is missing")
    if "rope_freqs.weight" in g.tensors:
        raise ClewError(f"{g.path}: tensor rope_freqs.weight (Llama-3 rotary scaling) is not supported")


def build_config(g: _Gguf) -> Any:  # -> transformers.PretrainedConfig
    """The transformers config the metadata describes, with llama.cpp's hardcoded values filled in."""
    from transformers import AutoConfig

    arch = g.arch
    d: dict[str, Any] = {
        "architectures": [_CLASS[arch]],
        "vocab_size": g.rows("token_embd.weight"),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.get("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": g.get("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": g.get("tokenizer.ggml.padding_token_id", None),
    }
    n_layers, n_heads, width = g.hp("block_count"), g.hp("attention.head_count"), g.hp("embedding_length")
    if arch == "gpt2":
        d |= {
            "n_layer": n_layers,
            "n_head": n_heads,
            "n_embd": width,
            "n_positions": g.hp("context_length"),
            "n_inner": g.hp("feed_forward_length", None),
            "layer_norm_epsilon": g.hp("attention.layer_norm_epsilon", 1e-5),
        }
        return AutoConfig.for_model("gpt2", **d)

    head_dim = g.hp("attention.key_length", width // n_heads)
    d |= {
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": g.hp("attention.head_count_kv", n_heads),
        "hidden_size": width,
        "intermediate_size": g.hp("feed_forward_length"),
        "head_dim": head_dim,
        "max_position_embeddings": g.hp("context_length"),
        "rms_norm_eps": g.hp("attention.layer_norm_rms_epsilon"),
        "rope_theta": g.hp("rope.freq_base", 10000.0),
    }
    if g.hp("rope.scaling.type", "none") == "linear":
        d["rope_scaling"] = {"rope_type": "linear", "factor": g.hp("rope.scaling.factor")}
    if arch == "llama":
        d["attention_bias"] = "blk.0.attn_q.bias" in g.tensors
    if arch in ("gemma2", "gemma3"):
        # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (by width/heads).
        big = (arch, n_layers) in (("gemma2", 46), ("gemma3", 62))
        # Older files leave the sliding pattern to llama.cpp's hardcoded value; newer ones may state it,
        # as a period or as one flag per layer.
        pattern = g.hp("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
        sliding = pattern if isinstance(pattern, list) else [(i + 1) % pattern != 0 for i in range(n_layers)]
        d |= {
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": width // n_heads if big else head_dim,
            "sliding_window": g.hp("attention.sliding_window"),
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "attn_logit_softcapping": g.hp("attn_logit_softcapping", None),
            "final_logit_softcapping": g.hp("final_logit_softcapping", None),
        }
    if arch == "gemma3":
        # the sliding layers' rotary base: llama.cpp's fixed 10,000 unless the file states one
        d["rope_local_base_freq"] = g.hp("rope.freq_base_swa", 10000.0)
    return AutoConfig.for_model(_MODEL_TYPE.get(arch, arch), **d)


def _hf_name(arch: str, gguf_name: str) -> str | None:
    stem, _, kind = gguf_name.rpartition(".")
    top, block, layers = (
        (_GPT2_TOP, _GPT2_BLOCK, "transformer.h")
        if arch == "gpt2"
        else (_DECODER_TOP, _GEMMA_BLOCK if arch.startswith("gemma") else _DECODER_BLOCK, "model.layers")
    )
    if stem in top:
        return f"{top[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in block:
        return f"{layers}.{parts[1]}.{block[parts[2]]}.{kind}"
    return None


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of each head's query/key rows (halves interleaved -> halves split)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_tensors(g: _Gguf, config: Any) -> dict[str, torch.Tensor]:
    """Every tensor of the file, dequantised to float32 and named, shaped and valued as transformers wants."""
    from gguf.quants import dequantize
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
    transposed = {f"{n}.weight" for n, m in skeleton.named_modules() if isinstance(m, Conv1D)}
    if getattr(config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)

    out: dict[str, torch.Tensor] = {}
    for t in tqdm(
        g.reader.tensors, desc=f"dequantising {g.path.name}", unit="tensor", file=sys.stderr, mininterval=1.0
    ):
        name = _hf_name(g.arch, t.name)
        if name is None or name not in expected:
            raise ClewError(f"{g.path}: tensor {t.name} has no counterpart in a transformers {g.arch} model")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if g.arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = config.num_attention_heads if "q_proj" in name else config.num_key_value_heads
            w = _unpermute(w, heads)
        if g.arch.startswith("gemma") and t.name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's norm weights as 1 + w
        if name in transposed:
            w = w.T
        if tuple(w.shape) != expected[name]:
            raise ClewError(f"{g.path}: tensor {t.name} has shape {w.shape}, expected {expected[name]}")
        out[name] = torch.from_numpy(np.require(w, requirements=["C", "W"]))
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ClewError(f"{g.path}: no tensor for {missing[0]} ({len(missing)} missing)")
    return out


def save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    """Build the tokenizer with transformers' GGUF support, in a folder holding nothing but the file."""
    from transformers import AutoTokenizer

    print(f"clew: building the tokenizer of {gguf_path.name}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="clew-tok-") as tmp:
        alone = Path(tmp) / gguf_path.name
        try:
            alone.symlink_to(gguf_path.resolve())
        except OSError:
            shutil.copyfile(gguf_path, alone)
        try:
            tok = AutoTokenizer.from_pretrained(tmp, gguf_file=alone.name)
        except Exception as err:  # transformers raises several types for a vocabulary it cannot build
            raise ClewError(f"{gguf_path}: cannot build its tokenizer ({_first_line(err)})") from None
    tok.save_pretrained(out_dir)
    settings_file = out_dir / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    for loading_option in ("is_local", "local_files_only"):  # how it was loaded here, not what it is
        settings.pop(loading_option, None)
    settings_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Write the Hugging Face folder for ``gguf_path`` into ``out_dir`` (created; must not exist yet)."""
    from safetensors.torch import save_file

    g = _Gguf(gguf_path)
    check_supported(g)
    config = build_config(g)
    out_dir.mkdir(parents=True)
    save_tokenizer(gguf_path, out_dir)
    tensors = convert_tensors(g, config)
    megabytes = sum(t.numel() for t in tensors.values()) * 4 / 2**20
    print(f"clew: writing {megabytes:.0f} MB of float32 weights", file=sys.stderr, flush=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors writes 0600; a cache may be shared
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    _widen_compatibility(out_dir)


def _widen_compatibility(out_dir: Path) -> None:
    """Let transformers 4.x (and the tools built on it) read the folder too: it takes the rotary base
    from a top-level ``rope_theta`` and does not know the tokenizer class name that 5.x writes."""
    config_file = out_dir / "config.json"
    config = json.loads(config_file.read_text())
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params and "rope_theta" not in config:
        config["rope_theta"] = params["rope_theta"]
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    tok_file = out_dir / "tokenizer_config.json"
    settings = json.loads(tok_file.read_text())
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")

"""Tiny models for tests and benchmarks: randomly initialised Hugging Face models of every supported
family saved as ordinary folders, SmolLM2-135M's shape for random-weight runs, and a character-level
tokenizer with a small vocabulary of words. Benchmarks import this module from ``tests/``."""

from __future__ import annotations

import string
from pathlib import Path

import torch

TEXT_WORDS = (
    "the a cat dog sat on mat and ran to house tree big small red blue green quick slow over under of".split()
)
"""The words of the random texts that tests and benchmarks train on."""


class CharTokenizer:
    """A character-level tokenizer in plain Python (quick to set up in spawned processes)."""

    bos_token_id, eos_token_id = 1, 2

    def __init__(self) -> None:
        self.ids = {c: i + 3 for i, c in enumerate(sorted(set(string.printable)))}

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(c, 0) for c in text]


def smollm2_config(n_ctx: int = 8192):
    """SmolLM2-135M's shape (30 layers, width 576, 9 query and 3 key/value heads), for random weights."""
    from clew.models import ModelConfig

    return ModelConfig(
        family="llama", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64,
        d_mlp=1536, n_ctx=n_ctx, norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True, bos_token_id=1,
    )  # fmt: skip


FAMILIES = ["llama", "llama3_tied", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2"]


def hf_config(family: str):
    import transformers as tf

    common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3)
    if family == "llama":
        return tf.LlamaConfig(
            **common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False
        )
    if family == "llama3_tied":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        }
        return tf.LlamaConfig(
            **common,
            num_attention_heads=4,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters=rope,
        )
    if family == "qwen2":
        return tf.Qwen2Config(
            **common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False
        )
    if family == "qwen3":
        return tf.Qwen3Config(**common, num_attention_heads=4, num_key_value_heads=2, head_dim=24)
    if family == "gemma2":
        return tf.Gemma2Config(
            **common,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=5,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=5.0,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **common,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        )
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=211, n_embd=64, n_layer=3, n_head=4, n_positions=64)
    raise ValueError(family)


def make_hf_model(family: str, seed: int = 0):
    """A transformers model of the family with every parameter perturbed away from its initial value."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family), attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf_model(family: str, folder: Path, seed: int = 0):
    model = make_hf_model(family, seed)
    model.save_pretrained(folder)
    return model


WORDS = ["<bos>", "<unk>"] + [f"w{i}" for i in range(209)]


def save_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the 211 ids ("w0" .. "w208"), adding ``<bos>`` like Llama."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    fast.save_pretrained(folder)

"""The model configuration: one dataclass whose knobs cover every supported family.

There is one transformer implementation (``transformer.py``); what distinguishes Llama from Gemma
from GPT-2 is written here, as data. ``ModelConfig.from_hf`` translates a Hugging Face
``config.json`` into it; each field's docstring says what it changes in the forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clew.errors import ClewError
from clew.files import load_json

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "gpt2")


@dataclass
class ModelConfig:
    family: str
    """The Hugging Face ``model_type`` this came from (for display and for the weight-name table)."""
    vocab_size: int
    """Number of token ids."""
    d_model: int
    """Width of the residual stream."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int
    """Number of query heads."""
    n_kv_heads: int
    """Number of key/value heads (fewer than ``n_heads`` for grouped-query attention)."""
    d_head: int
    """Width of one attention head."""
    d_mlp: int
    """Hidden width of the MLP."""
    n_ctx: int = 2048
    """Longest prompt the model accepts (learned positions or the rotary training length)."""
    norm: str = "rms"
    """``"rms"`` (RMSNorm) or ``"layer"`` (LayerNorm with bias)."""
    norm_eps: float = 1e-6
    """Epsilon inside every normalisation's square root."""
    norm_offset: float = 0.0
    """Added to the norm weights before use: Gemma stores ``w`` and multiplies by ``1 + w``."""
    positions: str = "rotary"
    """``"rotary"`` (RoPE on queries and keys) or ``"learned"`` (a position-embedding table)."""
    rope_theta: float = 10000.0
    """Rotary base of the global (full-attention) layers."""
    rope_local_theta: float | None = None
    """Rotary base of the sliding-window layers when it differs (Gemma-3: 10,000 vs 1,000,000)."""
    rope_scaling: dict[str, Any] | None = None
    """Rotary frequency scaling of the global layers: ``{"rope_type": "llama3" | "linear", ...}``."""
    qkv_bias: bool = False
    """Query, key and value projections have biases (Qwen2, GPT-2)."""
    out_bias: bool = False
    """The attention output projection has a bias (GPT-2)."""
    mlp_bias: bool = False
    """The MLP projections have biases (GPT-2)."""
    qk_norm: bool = False
    """A per-head RMSNorm on queries and keys before the rotary embedding (Qwen3, Gemma-3)."""
    post_attn_norm: bool = False
    """A norm on the attention output before it joins the residual stream (Gemma-2/3)."""
    post_mlp_norm: bool = False
    """A norm on the MLP output before it joins the residual stream (Gemma-2/3)."""
    attn_scale: float | None = None
    """Multiplier of the query-key dot products; ``None`` means ``d_head ** -0.5``."""
    attn_softcap: float | None = None
    """Attention scores become ``cap * tanh(score / cap)`` (Gemma-2)."""
    final_softcap: float | None = None
    """Logits become ``cap * tanh(logit / cap)`` (Gemma-2)."""
    sliding_window: int | None = None
    """Width of the local attention window on sliding layers: a query sees the last ``sliding_window`` keys."""
    layer_types: list[str] = field(default_factory=list)
    """``"full"`` or ``"sliding"`` for each layer; empty means all full."""
    mlp_act: str = "silu"
    """``"silu"``, ``"gelu_tanh"`` or ``"gelu"``."""
    gated_mlp: bool = True
    """``down(act(gate(x)) * up(x))`` when true, ``down(act(up(x)))`` when false (GPT-2)."""
    embed_scale: float = 1.0
    """Token embeddings are multiplied by this (Gemma: ``sqrt(d_model)``, rounded to the weights' dtype)."""
    tie_embeddings: bool = False
    """The unembedding shares the token-embedding matrix."""
    bos_token_id: int | None = None
    """The beginning-of-sequence token id, when the family has one."""

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "d_head",
            "d_mlp",
            "n_ctx",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ClewError(f"{name} must be a positive whole number, got {value!r}")
        for name in ("norm_eps", "norm_offset", "rope_theta", "embed_scale"):
            value = getattr(self, name)
            if type(value) not in (int, float) or value != value or abs(value) == float("inf"):
                raise ClewError(f"{name} must be a finite number, got {value!r}")
        if self.vocab_size > 2**24 or self.d_model > 2**17 or self.n_layers > 2**12 or self.d_mlp > 2**20:
            raise ClewError(
                f"sizes past any real model (vocab_size={self.vocab_size}, d_model={self.d_model}, "
                f"n_layers={self.n_layers}, d_mlp={self.d_mlp})"
            )
        if not isinstance(self.layer_types, list):
            raise ClewError(f"layer_types must be a list, got {self.layer_types!r}")
        if not self.layer_types:
            self.layer_types = ["full"] * self.n_layers
        if len(self.layer_types) != self.n_layers:
            raise ClewError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        if self.n_heads % self.n_kv_heads:
            raise ClewError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**d)

    @classmethod
    def from_hf_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        return cls.from_hf(load_json(path), source=str(path))

    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Translate a Hugging Face ``config.json`` (as a dict) into a ``ModelConfig``."""
        kind = d.get("model_type")
        if kind == "gemma3" and isinstance(
            d.get("text_config"), dict
        ):  # the multimodal wrapper: take its language model
            d = {**d["text_config"], "model_type": "gemma3_text"}
            kind = "gemma3_text"
        if kind not in SUPPORTED_MODEL_TYPES:
            raise ClewError(
                f"{source}: model_type {kind!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        try:
            if kind == "gpt2":
                return _gpt2(d)
            return _rotary_family(kind, d)
        except KeyError as err:
            raise ClewError(f"{source}: missing field {err.args[0]!r} for model_type {kind!r}") from None
        except ClewError as err:
            raise ClewError(f"{source}: {err}") from None
        except (TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError) as err:
            raise ClewError(f"{source}: a field has a value of the wrong kind ({err})") from None


def _gpt2(d: dict[str, Any]) -> ModelConfig:
    d_model = d["n_embd"]
    return ModelConfig(
        family="gpt2",
        vocab_size=d["vocab_size"],
        d_model=d_model,
        n_layers=d["n_layer"],
        n_heads=d["n_head"],
        n_kv_heads=d["n_head"],
        d_head=d_model // d["n_head"],
        d_mlp=d.get("n_inner") or 4 * d_model,
        n_ctx=d.get("n_positions", 1024),
        norm="layer",
        norm_eps=d.get("layer_norm_epsilon", 1e-5),
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        mlp_act={"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(
            d.get("activation_function", "gelu_new"), d.get("activation_function", "gelu_new")
        ),
        gated_mlp=False,
        tie_embeddings=True,
        bos_token_id=d.get("bos_token_id"),
    )


def _rope_params(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """The global rotary base and scaling, from either the old or the new (``rope_parameters``) fields."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type parameters (Gemma-3)
        params = params["full_attention"]
    scaling = d.get("rope_scaling") or (params if isinstance(params, dict) else None)
    theta = d.get("rope_theta") or (params or {}).get("rope_theta") or 10000.0
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            scaling = None
        elif rope_type not in ("llama3", "linear"):
            raise ClewError(f"rope_type {rope_type!r} is not supported (llama3, linear)")
        else:
            scaling = {**scaling, "rope_type": rope_type}
    return float(theta), scaling


def _rotary_family(kind: str, d: dict[str, Any]) -> ModelConfig:
    n_layers = d["num_hidden_layers"]
    n_heads = d["num_attention_heads"]
    gemma = kind.startswith("gemma")
    theta, scaling = _rope_params(d)
    local_theta = d.get("rope_local_base_freq")
    params = d.get("rope_parameters")
    if local_theta is None and isinstance(params, dict) and "sliding_attention" in params:
        local_theta = params["sliding_attention"].get("rope_theta")
    layer_types = [("sliding" if t == "sliding_attention" else "full") for t in d.get("layer_types") or []]
    if not layer_types and kind == "gemma2":
        layer_types = ["sliding" if i % 2 == 0 else "full" for i in range(n_layers)]
    if not layer_types and kind == "gemma3_text":
        pattern = d.get("sliding_window_pattern", 6)
        layer_types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers)]
    if kind in ("qwen2", "qwen3", "mistral", "llama") and not d.get("use_sliding_window", kind == "mistral"):
        if not d.get("layer_types"):
            layer_types = []
    sliding = d.get("sliding_window") if (layer_types and "sliding" in layer_types) else None
    if kind == "mistral" and d.get("sliding_window") and not layer_types:
        layer_types, sliding = ["sliding"] * n_layers, d["sliding_window"]
    d_model = d["hidden_size"]
    d_head = d.get("head_dim") or d_model // n_heads
    act = d.get("hidden_activation") or d.get("hidden_act", "silu")
    return ModelConfig(
        family=kind,
        vocab_size=d["vocab_size"],
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=d.get("num_key_value_heads") or n_heads,
        d_head=d_head,
        d_mlp=d["intermediate_size"],
        n_ctx=d.get("max_position_embeddings", 2048),
        norm="rms",
        norm_eps=d.get("rms_norm_eps", 1e-6),
        norm_offset=1.0 if gemma else 0.0,
        rope_theta=theta,
        rope_local_theta=float(local_theta) if local_theta is not None else None,
        rope_scaling=scaling,
        qkv_bias=True if kind == "qwen2" else bool(d.get("attention_bias", False)),
        out_bias=bool(d.get("attention_bias", False)) and kind != "qwen2",
        mlp_bias=bool(d.get("mlp_bias", False)),
        qk_norm=kind in ("qwen3", "gemma3_text"),
        post_attn_norm=gemma,
        post_mlp_norm=gemma,
        attn_scale=d["query_pre_attn_scalar"] ** -0.5 if gemma else None,
        attn_softcap=d.get("attn_logit_softcapping") if gemma else None,
        final_softcap=d.get("final_logit_softcapping") if gemma else None,
        sliding_window=sliding,
        layer_types=layer_types,
        mlp_act={"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}.get(act, act),
        gated_mlp=True,
        embed_scale=float(d_model**0.5) if gemma else 1.0,
        tie_embeddings=bool(d.get("tie_word_embeddings", gemma)),
        bos_token_id=d.get("bos_token_id"),
    )

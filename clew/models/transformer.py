"""One decoder-only transformer for every supported family, readable in one sitting.

Shapes: B batch, P positions, D d_model, H query heads, K key/value heads, E d_head, V vocabulary.

The forward pass can *record* what attribution needs (residual streams, MLP inputs and outputs,
attention patterns, every normalisation's scale) and can run *frozen*: given patterns and scales are
used instead of recomputed, so that everything except the MLPs is linear in the residual stream.
The MLP of every layer can be replaced by a caller's function (the transcoders plug in there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clew.models.config import ModelConfig
from clew.models.points import read_point, write_point


class MLPReplacement(Protocol):
    """Stands in for every layer's MLP: called for layers 0..n-1 in order within one forward pass."""

    write: str
    """The write point (:data:`clew.models.points.WRITE_POINTS`) where the returned tensor goes:
    ``"mlp_out"`` (the MLP module's output, before any post-MLP norm) or ``"resid_delta"`` (what the
    MLP branch adds to the residual stream). A reader picks its input with
    :func:`clew.models.points.read_input`."""

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor: ...


@dataclass
class Frozen:
    """The nonlinear quantities of one prompt, replayed by a frozen forward pass."""

    patterns: Sequence[Tensor]
    """Per layer, the attention pattern (B, H, P, P) after softmax (a :class:`Patterns` when recorded)."""
    scales: dict[str, Tensor]
    """Per normalisation (``"3.ln1"``, ``"3.attn_post"``, ``"3.ln2"``, ``"3.mlp_post"``, ``"final"``),
    the factor (B, P, 1) that multiplies the (centred) input: 1/rms or 1/std."""


class Patterns(Sequence[Tensor]):
    """Per layer, a recorded pass's attention pattern (B, H, P, P): kept, or recomputed on each access.

    Kept, they take L x H x P^2 floats: 18 GB for SmolLM2-135M at 4,096 tokens. Not kept
    (``model.run(..., keep_patterns=False)``), a pattern is rebuilt from the layer's recorded input
    and pre-attention norm scale, both per position, so the same values come back (up to the order
    of the softmax's sum when only some rows are asked for). :meth:`rows` gives the rows of some
    queries over the keys they can see, without ever forming the whole square.
    """

    def __init__(self, model: Transformer | None = None, cache: ActivationCache | None = None):
        self._model, self._cache = model, cache  # both given: recomputed rather than kept
        self._kept: list[Tensor] = []
        self._n = 0

    @property
    def kept(self) -> bool:
        return self._model is None

    def append(self, pattern: Tensor) -> None:
        if self.kept:
            self._kept.append(pattern)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Tensor]:
        return (self[layer] for layer in range(len(self)))

    def __getitem__(self, layer: int) -> Tensor:  # type: ignore[override]
        if self.kept:
            return self._kept[layer]
        if not 0 <= layer < self._n:
            raise IndexError(layer)
        P = self._cache.resid_pre[layer].shape[1]  # type: ignore[union-attr]
        return self.rows(layer, 0, P)

    def rows(self, layer: int, start: int, stop: int) -> Tensor:
        """(B, H, stop - start, stop): the pattern of queries ``start .. stop-1`` over keys ``0 .. stop-1``
        (a causal pattern is zero beyond them)."""
        return next(self.blocks(layer, stop, stop - start, start))[2]

    def blocks(self, layer: int, P: int, size: int, first: int = 0) -> Iterator[tuple[int, int, Tensor]]:
        """The pattern of queries ``first .. P-1`` in blocks of ``size``: ``(start, stop, rows)`` with rows
        (B, H, stop - start, stop) over the keys those queries can see. Rebuilt, the queries and keys
        are computed once for all blocks and the square is never formed whole."""
        starts = range(first, P, size)
        if self.kept:
            for start in starts:
                stop = min(start + size, P)
                yield start, stop, self._kept[layer][:, :, start:stop, :stop]
            return
        model, cache = self._model, self._cache
        assert model is not None and cache is not None
        attn, resid = model.blocks[layer].attn, cache.resid_pre[layer]
        x = model.blocks[layer].ln1(resid[:, :P], cache.scales[f"{layer}.ln1"][:, :P])
        rope = model.rope(layer, resid.shape[1], x)  # the whole prompt's, cached once; rows 0..P-1
        q, k = attn.queries_keys(x, None if rope is None else (rope[0][:P], rope[1][:P]))
        for start in starts:
            stop = min(start + size, P)
            yield start, stop, attn.pattern_rows(q[:, :, start:stop], k[:, :, :stop], start)


@dataclass
class ActivationCache:
    """What a recorded forward pass hands back, per layer (each tensor (B, P, D) unless noted)."""

    resid_pre: list[Tensor] = field(default_factory=list)
    """The residual stream entering each block."""
    resid_mid: list[Tensor] = field(default_factory=list)
    """The residual stream after attention, before the MLP's norm."""
    mlp_in: list[Tensor] = field(default_factory=list)
    """The MLP's normalised input."""
    mlp_out: list[Tensor] = field(default_factory=list)
    """The MLP module's output, before any post-MLP norm."""
    mlp_delta: list[Tensor] = field(default_factory=list)
    """What the MLP branch adds to the residual stream (after any post-MLP norm)."""
    patterns: Patterns = field(default_factory=Patterns)
    """Attention patterns (B, H, P, P), kept or recomputed on access (:class:`Patterns`)."""
    scales: dict[str, Tensor] = field(default_factory=dict)
    """Every normalisation's scale (B, P, 1), keyed as in :class:`Frozen`."""
    resid_final: Tensor | None = None
    """The residual stream entering the final norm."""

    def frozen(self) -> Frozen:
        return Frozen(patterns=self.patterns, scales=dict(self.scales))

    def read(self, point: str, layer: int) -> Tensor:
        """(B, P, D) what a dictionary reading at ``point`` (``resid_mid``, ``mlp_in``) sees at ``layer``."""
        return getattr(self, read_point(point).cache)[layer]

    def written(self, point: str, layer: int) -> Tensor:
        """(B, P, D) what the MLP really wrote at write point ``point`` (``mlp_out``, ``resid_delta``)."""
        return getattr(self, write_point(point).cache)[layer]


@dataclass
class RunResult:
    logits: Tensor
    """(B, P, V)"""
    cache: ActivationCache | None = None


class Norm(nn.Module):
    """RMSNorm or LayerNorm whose scale can be recorded or replayed."""

    def __init__(self, d: int, cfg: ModelConfig):
        super().__init__()
        self.eps, self.offset, self.centred = cfg.norm_eps, cfg.norm_offset, cfg.norm == "layer"
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if self.centred else None

    def scale(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., 1): 1/rms (RMSNorm) or 1/std (LayerNorm), in float32."""
        x = x.float()
        if self.centred:
            return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        y = x.float()
        if self.centred:
            y = y - y.mean(-1, keepdim=True)
        y = y * scale * (self.weight.float() + self.offset)
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        H, K, E, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
        self.q = nn.Linear(D, H * E, bias=cfg.qkv_bias)
        self.k = nn.Linear(D, K * E, bias=cfg.qkv_bias)
        self.v = nn.Linear(D, K * E, bias=cfg.qkv_bias)
        self.o = nn.Linear(H * E, D, bias=cfg.out_bias)
        self.q_norm = Norm(E, cfg) if cfg.qk_norm else None
        self.k_norm = Norm(E, cfg) if cfg.qk_norm else None
        self.sliding = cfg.layer_types[layer] == "sliding"

    def queries_keys(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, qk_scales: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, P, D) normalised input -> queries (B, H, P, E) and keys (B, K, P, E), normed and rotated.
        ``qk_scales`` replays the query/key norms' scales (Qwen3, Gemma-3) instead of computing them."""
        cfg = self.cfg
        B, P, _ = x.shape
        q = self.q(x).view(B, P, cfg.n_heads, cfg.d_head)
        k = self.k(x).view(B, P, cfg.n_kv_heads, cfg.d_head)
        if self.q_norm is not None and self.k_norm is not None:
            sq, sk = qk_scales if qk_scales is not None else (self.q_norm.scale(q), self.k_norm.scale(k))
            q, k = self.q_norm(q, sq), self.k_norm(k, sk)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k

    def qk_norm_scales(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The query and key norms' scales (B, P, H, 1) and (B, P, K, 1) on normalised input x (B, P, D);
        None without query/key norms."""
        if self.q_norm is None or self.k_norm is None:
            return None
        B, P, _ = x.shape
        q = self.q(x).view(B, P, self.cfg.n_heads, self.cfg.d_head)
        k = self.k(x).view(B, P, self.cfg.n_kv_heads, self.cfg.d_head)
        return self.q_norm.scale(q), self.k_norm.scale(k)

    def pattern(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """(B, P, D) normalised input -> attention pattern (B, H, P, P)."""
        q, k = self.queries_keys(x, rope)
        return self.pattern_rows(q, k, 0)

    def pattern_rows(self, q: Tensor, k: Tensor, start: int) -> Tensor:
        """Queries (B, H, n, E) of positions ``start .. start+n-1`` and keys (B, K, m, E) of positions
        ``0 .. m-1`` -> their rows of the attention pattern (B, H, n, m)."""
        cfg = self.cfg
        k = k.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)  # (B, H, m, E)
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(cfg.scale)  # (B, H, n, m), in place: long prompts
        if cfg.attn_softcap is not None:
            scores = scores.div_(cfg.attn_softcap).tanh_().mul_(cfg.attn_softcap)
        windowed = self.sliding and self.cfg.sliding_window is not None
        first = 0 if windowed else start  # without a window, every query here sees all keys before start
        hidden = ~self.mask(k.shape[2], q.device, start, q.shape[2])[:, first:]
        scores[..., first:].masked_fill_(hidden, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q.dtype)

    def mask(self, P: int, device: torch.device, start: int = 0, n: int | None = None) -> Tensor:
        """(n, P) True where query q (of ``start .. start+n-1``; all P by default) may see key k (of
        ``0 .. P-1``): causal, and within the window on sliding layers."""
        i = torch.arange(start, start + (P - start if n is None else n), device=device)[:, None]
        j = torch.arange(P, device=device)[None, :]
        allowed = j <= i
        if self.sliding and self.cfg.sliding_window is not None:
            allowed &= i - j < self.cfg.sliding_window
        return allowed

    def values(self, x: Tensor) -> Tensor:
        """(B, P, D) -> (B, H, P, E), key/value heads repeated for grouped-query attention."""
        B, P, _ = x.shape
        v = self.v(x).view(B, P, self.cfg.n_kv_heads, self.cfg.d_head).transpose(1, 2)
        return v.repeat_interleave(self.cfg.n_heads // self.cfg.n_kv_heads, dim=1)

    def fast(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """The same computation through fused scaled-dot-product attention, when no pattern is needed."""
        cfg = self.cfg
        B, P, _ = x.shape
        q, k = self.queries_keys(x, rope)
        v = self.v(x).view(B, P, cfg.n_kv_heads, cfg.d_head).transpose(1, 2)
        windowed = self.sliding and cfg.sliding_window is not None and P > cfg.sliding_window
        z = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.mask(P, x.device) if windowed else None,
            is_causal=not windowed,
            scale=cfg.scale,
            enable_gqa=cfg.n_heads != cfg.n_kv_heads,
        )
        return self.o(z.transpose(1, 2).reshape(B, P, -1))

    def mix(self, pattern: Tensor, x: Tensor) -> Tensor:
        """Apply a (possibly frozen) pattern (B, H, P, P) to the values of x (B, P, D) -> (B, P, D)."""
        z = pattern @ self.values(x)  # (B, H, P, E)
        return self.o(z.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, M, bias = cfg.d_model, cfg.d_mlp, cfg.mlp_bias
        self.gate = nn.Linear(D, M, bias=bias) if cfg.gated_mlp else None
        self.up = nn.Linear(D, M, bias=bias)
        self.down = nn.Linear(M, D, bias=bias)
        self.act = {
            "silu": F.silu,
            "gelu": F.gelu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        }[cfg.mlp_act]

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        D = cfg.d_model
        self.ln1 = Norm(D, cfg)
        self.attn = Attention(cfg, layer)
        self.attn_post = Norm(D, cfg) if cfg.post_attn_norm else None
        self.ln2 = Norm(D, cfg)
        self.mlp = MLP(cfg)
        self.mlp_post = Norm(D, cfg) if cfg.post_mlp_norm else None


ResidualEdit = Callable[[int, Tensor], Tensor]
"""``(layer, resid) -> resid``: called on the residual stream (B, P, D) entering each block (and, with
``layer = n_layers``, the one entering the final norm); what it returns flows on. Steering vectors
and interventions on the residual stream plug in here."""


class _Pass:
    """The state of one forward pass: where to record, what to replay, what replaces the MLPs, what
    edits the residual stream."""

    def __init__(
        self,
        record: bool,
        frozen: Frozen | None,
        mlp: MLPReplacement | None,
        edit: ResidualEdit | None = None,
        recompute: Transformer | None = None,
    ):
        self.cache = ActivationCache() if record else None
        if self.cache is not None and recompute is not None:  # patterns rebuilt on access, not kept
            self.cache.patterns = Patterns(recompute, self.cache)
        self.frozen, self.mlp, self.edit = frozen, mlp, edit

    def norm(self, name: str, module: Norm, x: Tensor) -> Tensor:
        scale = self.frozen.scales[name] if self.frozen is not None else module.scale(x)
        if self.cache is not None:
            self.cache.scales[name] = scale
        return module(x, scale)


class Transformer(nn.Module):
    """A decoder-only language model; ``model(tokens)`` maps (B, P) token ids to (B, P, V) logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = Norm(cfg.d_model, cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.tokenizer: Any = None  # the family's own tokenizer, set by the loader
        self.name = ""  # where the model came from (a path, hub id or built-in name)
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    # --- the forward pass -------------------------------------------------------------------------------

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, P) token ids -> (B, P, V) logits."""
        return self.run(tokens).logits

    def run(
        self,
        tokens: Tensor,
        *,
        record: bool = False,
        frozen: Frozen | None = None,
        mlp: MLPReplacement | None = None,
        edit: ResidualEdit | None = None,
        keep_patterns: bool = True,
    ) -> RunResult:
        """The full forward pass; ``record`` keeps an :class:`ActivationCache` (its attention patterns
        recomputed on access rather than kept when not ``keep_patterns``), ``frozen`` replays one,
        ``mlp`` replaces the MLPs, ``edit`` changes the residual stream entering each block."""
        state = _Pass(record, frozen, mlp, edit, None if keep_patterns else self)
        resid = self.embed_tokens(tokens)  # (B, P, D)
        resid = self.run_layers(resid, 0, self.cfg.n_layers, state=state)
        logits = self.unembed_resid(resid, state)
        return RunResult(logits=logits, cache=state.cache)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """(B, P) -> (B, P, D): the residual stream entering layer 0."""
        x = self.embed(tokens)
        if self.cfg.embed_scale != 1.0:
            x = x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device))
        return x

    def unembed_resid(self, resid: Tensor, state: _Pass | None = None) -> Tensor:
        """(B, P, D) final residual -> (B, P, V) logits, through the final norm and any soft-capping."""
        state = state or _Pass(False, None, None)
        if state.cache is not None:
            state.cache.resid_final = resid
        logits = self.unembed(state.norm("final", self.ln_final, resid))
        if self.cfg.final_softcap is not None:
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    def mlp_branch(self, layer: int, mlp_in: Tensor, write: str, frozen: Frozen | None = None) -> Tensor:
        """The model's own MLP output at write point ``write`` from its normalised input (B, P, D); the
        post-MLP norm's scale (Gemma-2/3, ``resid_delta``) is replayed from ``frozen`` when given."""
        block = self.blocks[layer]
        out = block.mlp(mlp_in)
        if write_point(write).norm is None and block.mlp_post is not None:
            name = f"{layer}.mlp_post"
            out = block.mlp_post(
                out, frozen.scales[name] if frozen is not None else block.mlp_post.scale(out)
            )
        return out

    def run_layers(
        self,
        resid: Tensor,
        start: int,
        stop: int,
        *,
        state: _Pass | None = None,
        frozen: Frozen | None = None,
        mlp: MLPReplacement | None = None,
        edit: ResidualEdit | None = None,
    ) -> Tensor:
        """Run blocks ``start .. stop-1`` on the residual stream (B, P, D) entering ``start``."""
        state = state or _Pass(False, frozen, mlp, edit)
        P = resid.shape[1]
        for layer in range(start, stop):
            if state.edit is not None:
                resid = state.edit(layer, resid)
            resid = self._block(layer, resid, state, self.rope(layer, P, resid))
        if state.edit is not None and stop == self.cfg.n_layers:
            resid = state.edit(stop, resid)
        return resid

    def _block(self, layer: int, resid: Tensor, st: _Pass, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        block, cache = self.blocks[layer], st.cache
        x = st.norm(f"{layer}.ln1", block.ln1, resid)
        if st.frozen is not None:
            pattern: Tensor | None = st.frozen.patterns[layer]
        elif cache is not None or self.cfg.attn_softcap is not None:  # fused attention cannot soft-cap
            pattern = block.attn.pattern(x, rope)
        else:
            pattern = None
        attn_out = block.attn.fast(x, rope) if pattern is None else block.attn.mix(pattern, x)
        if block.attn_post is not None:
            attn_out = st.norm(f"{layer}.attn_post", block.attn_post, attn_out)
        mid = resid + attn_out
        mlp_in = st.norm(f"{layer}.ln2", block.ln2, mid)
        if st.mlp is not None and write_point(st.mlp.write).norm is None:  # it writes past any post-MLP norm
            out, delta = None, st.mlp(layer, mid, mlp_in)
        else:
            out = st.mlp(layer, mid, mlp_in) if st.mlp is not None else block.mlp(mlp_in)
            delta = out if block.mlp_post is None else st.norm(f"{layer}.mlp_post", block.mlp_post, out)
        if cache is not None and pattern is not None:  # a recorded pass always has its pattern
            cache.resid_pre.append(resid)
            cache.resid_mid.append(mid)
            cache.mlp_in.append(mlp_in)
            cache.mlp_out.append(out if out is not None else delta)
            cache.mlp_delta.append(delta)
            cache.patterns.append(pattern)
        return mid + delta

    # --- rotary embeddings ------------------------------------------------------------------------------

    def rope(self, layer: int, P: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin), each (P, E), for this layer's rotary base; None for learned positions."""
        cfg = self.cfg
        if cfg.positions != "rotary":
            return None
        local = cfg.layer_types[layer] == "sliding" and cfg.rope_local_theta is not None
        key = (local, P, like.device, like.dtype)
        cached = self._rope_cache
        if key not in cached:
            theta = cfg.rope_local_theta if local else cfg.rope_theta
            inv_freq = rope_frequencies(cfg.d_head, theta, None if local else cfg.rope_scaling)
            angles = torch.arange(P, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (P, E/2)
            angles = torch.cat([angles, angles], dim=-1).to(like.device)
            cached[key] = (angles.cos().to(like.dtype), angles.sin().to(like.dtype))
        return cached[key]


def rope_frequencies(d_head: int, theta: float, scaling: dict | None) -> Tensor:
    """The (E/2,) inverse frequencies of rotary embeddings, with Llama-3 or linear scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the middle band interpolated
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_ctx = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, P, E) by the angles of each position (the two-halves convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin

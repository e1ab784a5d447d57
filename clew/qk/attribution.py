"""QK attribution: why a head attends where it does, as a sum over pairs of query-side and key-side pieces.

A head's score at query position q and key position k (before the softmax and before any
soft-capping) is ``scale * Q(x_q) . K(x_k)``, where ``x`` is the residual stream entering the layer,
and ``Q`` (``K``) is the frozen pre-attention norm, the head's query (key) projection with its bias,
the frozen query (key) norm of Qwen3 and Gemma-3, and the rotation of position q (k). With the
norms' scales frozen at the clean run each side is affine: ``Q(x) = Q_lin(x) + Q(0)``. Writing each
residual as its pieces (:func:`~clew.qk.terms.residual_terms`: embedding, features, errors, each
earlier head's output, skip paths, biases) gives

    score = sum over pairs (i, j) of scale * Q_lin(t_i) . K_lin(u_j)

with the constant ``Q(0)`` (``K(0)``) as one more piece on its side, the "query bias" ("key bias").
Every pair is exact, and the pairs sum to the score. Rotary embeddings are fixed linear maps per
position and grouped-query attention only shares a key head, so neither breaks this. Gemma-2's
soft-capping ``c tanh(s / c)`` is not bilinear: the pre-cap score ``s`` is attributed, and the
capped value is reported beside it.

The marginal of a query-side piece is its row sum, ``scale * Q_lin(t_i) . K(x_k)``: the change of the
score per unit of that piece's write, with the norms frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.qk.terms import Pieces, Terms
from clew.replacement import LocalReplacement


@dataclass
class QKAttribution:
    """One head's score at one (query, key) pair, split over pairs of pieces."""

    layer: int
    head: int
    query: int
    key: int
    score: float
    """The pre-softmax score from the recorded residual streams (before soft-capping)."""
    capped: float | None
    """The score after Gemma-2's soft-capping; None for models without it."""
    query_terms: Terms
    """The query side's pieces, the query bias last."""
    key_terms: Terms
    """The key side's pieces, the key bias last."""
    pairs: Tensor
    """(n_query, n_key) each pair's contribution; they sum to ``score``."""
    query_images: Tensor
    """(n_query, E) each query-side piece's image: its part of this head's rotated query."""
    key_images: Tensor
    """(n_key, E) each key-side piece's image: its part of the head's rotated key."""

    @property
    def query_marginals(self) -> Tensor:
        """(n_query,) each query-side piece's contribution with the whole key side."""
        return self.pairs.sum(1)

    @property
    def key_marginals(self) -> Tensor:
        """(n_key,) each key-side piece's contribution with the whole query side."""
        return self.pairs.sum(0)

    def top_pairs(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` pairs of largest |contribution|: (query piece, key piece, contribution)."""
        flat = self.pairs.flatten()
        order = flat.abs().argsort(descending=True)[:k].tolist()
        nk = self.pairs.shape[1]
        return [
            (self.query_terms.labels[i // nk], self.key_terms.labels[i % nk], float(flat[i])) for i in order
        ]

    def top_marginals(self, side: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` pieces of one side (``"query"`` or ``"key"``) with the largest |marginal|."""
        terms, values = (
            (self.query_terms, self.query_marginals)
            if side == "query"
            else (self.key_terms, self.key_marginals)
        )
        order = values.abs().argsort(descending=True)[:k].tolist()
        return [(terms.labels[i], float(values[i])) for i in order]

    def format(self, k: int = 10) -> str:
        """The score, the top pairs and the top pieces of each side, as ``clew qk`` prints them."""
        capped = f" (after soft-capping {self.capped:+.4g})" if self.capped is not None else ""
        total = float(self.pairs.sum())
        lines = [
            f"head L{self.layer}.H{self.head}, query {self.query} -> key {self.key}: score {self.score:+.4g}{capped}; "
            f"{len(self.query_terms)} x {len(self.key_terms)} pairs sum to {total:+.4g}",
            "top pairs (query piece x key piece):",
        ]
        lines += [f"  {v:+9.4f}  {q}  x  {kk}" for q, kk, v in self.top_pairs(k)]
        for side in ("query", "key"):
            lines.append(f"top {side}-side pieces (with the whole other side):")
            lines += [f"  {v:+9.4f}  {name}" for name, v in self.top_marginals(side, k)]
        return "\n".join(lines)


class _Side:
    """The query and key maps of one layer with everything frozen at the clean run: residual vectors
    (n, D) at a position -> that position's queries (n, H, E) and keys (n, K, E)."""

    def __init__(self, local: LocalReplacement, layer: int):
        self.local, self.layer = local, layer
        model, cache = local.model, local.cache
        self.block = model.blocks[layer]
        self.scale_ln1 = cache.scales[f"{layer}.ln1"][0]  # (P, 1)
        clean = self.block.ln1(cache.resid_pre[layer], cache.scales[f"{layer}.ln1"])  # (1, P, D)
        self.qk_scales = self.block.attn.qk_norm_scales(clean)  # each (1, P, heads, 1), or None
        self.rope = model.rope(layer, local.n_pos, clean)
        q, k = self.block.attn.queries_keys(clean, self.rope, self.qk_scales)  # the model's own code path
        self.queries, self.keys = q[0].float(), k[0].float()  # (H, P, E), (K, P, E) of the recorded run

    def __call__(self, vectors: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        dtype = self.local.model.embed.weight.dtype
        x = self.block.ln1(vectors[:, None].to(dtype), self.scale_ln1[pos])  # (n, 1, D)
        rope = None if self.rope is None else (self.rope[0][pos : pos + 1], self.rope[1][pos : pos + 1])
        scales = None
        if self.qk_scales is not None:
            scales = (self.qk_scales[0][:, pos : pos + 1], self.qk_scales[1][:, pos : pos + 1])
        q, k = self.block.attn.queries_keys(x, rope, scales)  # (n, H, 1, E), (n, K, 1, E)
        return q[:, :, 0].float(), k[:, :, 0].float()


@torch.no_grad()
def expand_head(local: LocalReplacement, result: QKAttribution, label: str) -> list[tuple[str, float]]:
    """A head piece of either side (``head L1.H0@10``) split over what that head read: every piece of the
    residual streams it attended to (:func:`~clew.qk.terms.head_value_terms`), with its contribution to
    the score through that side, largest first. They sum to the head piece's marginal."""
    m = re.fullmatch(r"head L(\d+)\.H(\d+)@(\d+)", label)
    side = (
        "query" if label in result.query_terms.labels else "key" if label in result.key_terms.labels else None
    )
    if m is None or side is None:
        raise ClewError(f"{label!r} is not a head piece of this score (e.g. 'head L1.H0@{result.key}')")
    layer, head, pos = (int(g) for g in m.groups())
    pieces = Pieces(local).head_value(layer, head, pos)
    cfg = local.model.cfg
    zero = torch.zeros(1, local.d_model)
    q_img, k_img = _Side(local, result.layer)(torch.cat([pieces.stacked(), zero]), pos)
    if side == "query":
        images, other = q_img[:, result.head], result.key_images.sum(0)
    else:
        images, other = k_img[:, result.head // (cfg.n_heads // cfg.n_kv_heads)], result.query_images.sum(0)
    values = cfg.scale * (images[:-1] - images[-1:]) @ other  # the side map's constant is not the head's
    order = values.abs().argsort(descending=True).tolist()
    return [(pieces.labels[i], float(values[i])) for i in order]


def _check(local: LocalReplacement, layer: int, head: int, query: int, key: int) -> None:
    cfg = local.model.cfg
    if not 0 <= layer < local.n_layers:
        raise ClewError(
            f"layer {layer} is out of range: the model has {local.n_layers} layers (0..{local.n_layers - 1})"
        )
    if not 0 <= head < cfg.n_heads:
        raise ClewError(
            f"head {head} is out of range: layer {layer} has {cfg.n_heads} heads (0..{cfg.n_heads - 1})"
        )
    for name, pos in (("query", query), ("key", key)):
        if not 0 <= pos < local.n_pos:
            raise ClewError(
                f"{name} position {pos} is out of range: the prompt has {local.n_pos} tokens (0..{local.n_pos - 1})"
            )
    if key > query:
        raise ClewError(
            f"key position {key} comes after query position {query}: a query attends only to keys at or before it"
        )
    allowed = local.model.blocks[layer].attn.mask(local.n_pos, torch.device("cpu"))
    if not bool(allowed[query, key]):
        raise ClewError(
            f"key position {key} is outside layer {layer}'s sliding window from query position {query}"
        )


def _with_bias(terms: Terms, images: Tensor, zero: Tensor, label: str) -> tuple[Terms, Tensor]:
    """The side's images of its pieces with the map's constant subtracted, and the constant as one more piece."""
    out = Terms(list(terms.labels), list(terms.kinds), list(terms.columns), list(terms.vectors))
    out.labels.append(label)
    out.kinds.append("bias")
    out.columns.append(-1)
    out.vectors.append(torch.zeros_like(terms.vectors[0]))
    return out, torch.cat([images - zero, zero])


@torch.no_grad()
def qk_attribution(local: LocalReplacement, layer: int, head: int, query: int, key: int) -> QKAttribution:
    """Split head ``head`` of ``layer``'s score at (``query``, ``key``) over pairs of pieces (module docstring)."""
    _check(local, layer, head, query, key)
    return _attribute(Pieces(local), _Side(local, layer), layer, [head], query, [key])[0]


@torch.no_grad()
def qk_query(
    local: LocalReplacement, query: int, layers: list[int] | None = None, heads: list[int] | None = None
) -> list[QKAttribution]:
    """Every (layer, head, key) at one query position: the pieces of each key position are found once."""
    cfg = local.model.cfg
    layers = list(range(local.n_layers)) if layers is None else layers
    heads = list(range(cfg.n_heads)) if heads is None else heads
    out, pieces = [], Pieces(local)
    for layer in layers:
        for h in heads:
            _check(local, layer, h, query, query)
        allowed = local.model.blocks[layer].attn.mask(local.n_pos, torch.device("cpu"))[query]
        keys = [k for k in range(query + 1) if bool(allowed[k])]
        out += _attribute(pieces, _Side(local, layer), layer, heads, query, keys)
    return out


def _attribute(
    pieces: Pieces, side: _Side, layer: int, heads: list[int], query: int, keys: list[int]
) -> list[QKAttribution]:
    local = pieces.local
    cfg = local.model.cfg
    group = cfg.n_heads // cfg.n_kv_heads
    zero = torch.zeros(1, local.d_model)
    q_raw = pieces.residual(layer, query)
    q_img, _ = side(torch.cat([q_raw.stacked(), zero]), query)  # (n + 1, H, E)
    q_terms, q_all = _with_bias(q_raw, q_img[:-1], q_img[-1:], "query bias")
    results = []
    for key in keys:
        k_raw = q_raw if key == query else pieces.residual(layer, key)
        _, k_img = side(torch.cat([k_raw.stacked(), zero]), key)  # (m + 1, K, E)
        k_terms, k_all = _with_bias(k_raw, k_img[:-1], k_img[-1:], "key bias")
        for head in heads:
            q_h, k_h = q_all[:, head], k_all[:, head // group]
            pairs = cfg.scale * q_h @ k_h.T  # (n + 1, m + 1)
            score = float(cfg.scale * side.queries[head, query] @ side.keys[head // group, key])
            capped = None
            if cfg.attn_softcap is not None:
                capped = cfg.attn_softcap * float(torch.tanh(torch.tensor(score / cfg.attn_softcap)))
            results.append(
                QKAttribution(layer, head, query, key, score, capped, q_terms, k_terms, pairs, q_h, k_h)
            )
    return results

"""The linear steps backwards through a frozen model: every transpose that attribution needs, in one place.

With attention patterns and normalisation scales frozen at a clean run, each piece of a block is a
linear map of the residual stream, and carrying a gradient (a target's vector) down the model is a
chain of their transposes. :class:`Backward` has one method per piece; the attribution engine, the
per-head split of an edge, QK attribution and constrained interventions are all built from them.

Gradients are position-major, ``(P, B, D)``: P positions (from the first up to the last one that
matters), B vectors carried at once, D d_model. Shapes: H query heads, K key/value heads, E d_head,
S sources written at one layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.models import ActivationCache, Transformer
from clew.models.points import Point, read_point, write_point
from clew.models.transformer import Norm

QUERY_BLOCK = 256
"""Queries per block in :meth:`Backward.pattern_t` for prompts longer than twice this."""

FOLD_BYTES = 512 << 20
"""Prompts whose folded patterns (:class:`FoldedAttention`, all layers together) take at most this
much memory, and whose patterns are kept, carry gradients through attention with the norms folded
into the weights and the pattern: SmolLM2-135M up to 500 tokens or so, in float32."""


def norm_transpose(norm: Norm, scale: Tensor, g: Tensor, weight: Tensor | None = None) -> Tensor:
    """The transpose of a frozen norm: a gradient at its output -> at its input. ``scale`` broadcasts
    against ``g``; ``weight`` is the norm's ``w + offset`` when already prepared."""
    if weight is None:
        weight = norm.weight.to(g.dtype) + norm.offset
    g = g * (weight * scale.to(g.dtype))
    if norm.centred:
        g = g - g.mean(-1, keepdim=True)
    return g


@dataclass
class LayerWeights:
    """One layer's matrices in the backward pass's dtype, prepared once."""

    o: Tensor
    """(D, H*E) the attention output projection."""
    v: Tensor
    """(K*E, D) the value projection."""
    norms: dict[str, Tensor] = field(default_factory=dict)
    """Per norm of the block (``ln1``, ``attn_post``, ``ln2``, ``mlp_post``): its ``w + offset``."""
    skip_t: Tensor | None = None
    """(D, D) ``W_skip^T`` of the dictionary's skip path, if any."""
    folded: FoldedAttention | None = None
    """The attention branch with its norms folded in, for prompts short enough (:data:`FOLD_BYTES`)
    whose patterns are kept."""


@dataclass
class FoldedAttention:
    """One layer's frozen attention branch as three products, its norms folded in.

    The transpose of a frozen norm is a fixed diagonal (its weight, and for a LayerNorm the
    centring) times a scale per position. The diagonal goes into the projection beside it, the scale
    into the pattern's axis of the same position, so carrying a gradient is ``W_O``, one product per
    key/value head with its query heads' patterns side by side, and ``W_V``: no pass over the
    gradient for the norms, and no sum over the query heads of a group."""

    o: Tensor
    """(D, H*E) ``W_O`` with the post-attention norm's weight (and centring) folded in."""
    pattern: Tensor
    """(K, N, G, N) over the whole prompt: ``[k, key, j, query]`` is query head ``k*G + j``'s weight
    of ``key`` at ``query``, times the pre-attention norm's scale at ``key`` and the post-attention
    norm's scale at ``query``."""
    v: Tensor
    """(K, E, D) ``W_V`` per key/value head with the pre-attention norm's weight (and centring)
    folded in."""
    first: Tensor
    """(D, K*E) the first position's whole step to the values: ``o`` with each query head's weight
    of the first key at the first query (its pattern there, 1, times the norms' scales) folded in and
    summed over the query heads of each key/value head. A gradient that lives at the first position
    alone (a target there) needs only this and ``v``."""


@dataclass
class WriteSources:
    """Every source that writes at one layer's write point, padded position by position."""

    vectors: Tensor
    """(P, S, D) the vector each source writes (activation times decoder row, or the error), zero-padded."""
    columns: Tensor
    """(P, S) the source's column in the adjacency rows (padding: column 0, with a zero vector)."""
    crowded: list[tuple[int, Tensor, Tensor]]
    """Sources beyond the padded width S at the few crowded positions (the first token often has many
    more features than the rest): per such position, (position, (X, D) vectors, (X,) columns)."""


class Backward:
    """The transposes of a model frozen at ``cache``, with ``transcoder``'s hook points and skip path."""

    def __init__(
        self, model: Transformer, cache: ActivationCache, transcoder: Transcoder, dtype: torch.dtype
    ):
        self.model, self.cache, self.tc, self.dtype = model, cache, transcoder, dtype
        self.device = model.embed.weight.device
        self.read = read_point(transcoder.cfg.read)
        self.write = write_point(transcoder.cfg.write)
        self._weights: dict[int, LayerWeights] = {}
        self._frozen = (cache.patterns, cache.scales)  # what the folded attention was made from

    def weights(self, layer: int) -> LayerWeights:
        """Layer's matrices and norm weights in the backward pass's dtype, prepared on first use (and
        again when the cache's patterns or scales were replaced, which the folded attention holds)."""
        if self._frozen[0] is not self.cache.patterns or self._frozen[1] is not self.cache.scales:
            self._weights.clear()
            self._frozen = (self.cache.patterns, self.cache.scales)
        if layer not in self._weights:
            block, dt = self.model.blocks[layer], self.dtype
            w = LayerWeights(o=block.attn.o.weight.to(dt), v=block.attn.v.weight.to(dt))
            for name in ("ln1", "attn_post", "ln2", "mlp_post"):
                norm = getattr(block, name)
                if norm is not None:
                    w.norms[name] = (norm.weight.float() + norm.offset).to(dt)
            if self.tc.cfg.skip:
                eye = torch.eye(self.model.cfg.d_model, dtype=torch.float32, device=self.device)
                w.skip_t = self.tc.skip_term(layer, eye).to(dt)  # (D, D) = W_skip^T
            w.folded = self._fold(layer, w)
            self._weights[layer] = w
        return self._weights[layer]

    def _fold(self, layer: int, w: LayerWeights) -> FoldedAttention | None:
        """Layer's attention with its norms folded in (:class:`FoldedAttention`), when the prompt is
        short and its patterns are kept."""
        patterns = self.cache.patterns
        if not patterns.kept:
            return None
        cfg, block = self.model.cfg, self.model.blocks[layer]
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        kept = patterns[layer][0]  # (H, Nq, Nk)
        N = kept.shape[-1]
        if len(patterns) * H * N * N * torch.finfo(self.dtype).bits // 8 > FOLD_BYTES:
            return None
        ft = torch.promote_types(torch.float32, self.dtype)  # float64 stays float64
        pattern = kept.to(ft) * self.scale(f"{layer}.ln1")[:, 0].to(ft)[None, None, :]  # at each key
        o = block.attn.o.weight.to(ft)  # (D, H*E)
        if "attn_post" in w.norms:
            post = block.attn_post
            pattern = pattern * self.scale(f"{layer}.attn_post")[:, 0].to(ft)[None, :, None]  # at each query
            if post.centred:
                o = o - o.mean(0, keepdim=True)
            o = o * (post.weight.to(ft) + post.offset)[:, None]
        v = block.attn.v.weight.to(ft) * (block.ln1.weight.to(ft) + block.ln1.offset)[None, :]  # (K*E, D)
        if block.ln1.centred:
            v = v - v.mean(1, keepdim=True)
        pattern = pattern.transpose(1, 2).reshape(K, H // K, N, N).transpose(1, 2)  # (K, Nk, G, Nq)
        first = o.view(-1, K, H // K, E) * pattern[:, 0, :, 0, None]  # (D, K, G, E)
        return FoldedAttention(
            o.to(self.dtype),
            pattern.contiguous().to(self.dtype),
            v.view(K, E, -1).to(self.dtype),
            first.sum(2).reshape(-1, K * E).to(self.dtype),
        )

    def scale(self, name: str) -> Tensor:
        """(P, 1) a frozen normalisation scale (``"3.ln2"``, ``"final"``)."""
        return self.cache.scales[name][0]

    # --- norms and hook points -------------------------------------------------------------------------

    def norm_t(self, layer: int, name: str, g: Tensor) -> Tensor:
        """The transpose of layer's frozen norm ``name`` on a (P, B, D) gradient."""
        scale = self.cache.scales[f"{layer}.{name}"][0, : g.shape[0], :, None]  # (P, 1, 1)
        norm = getattr(self.model.blocks[layer], name)
        return norm_transpose(norm, scale, g, self.weights(layer).norms[name])

    def _norm_at(self, layer: int, point: Point) -> str | None:
        """The norm of layer's block between ``point`` and the residual stream, if the block has one."""
        name = point.norm
        return name if name is not None and getattr(self.model.blocks[layer], name) is not None else None

    def read_t(self, layer: int, g: Tensor) -> Tensor:
        """A gradient at the dictionary's read point -> at the residual stream before the MLP (P, B, D)."""
        name = self._norm_at(layer, self.read)
        return g if name is None else self.norm_t(layer, name, g)

    def write_t(self, layer: int, g: Tensor) -> Tensor:
        """A gradient at the residual stream after the MLP -> at the dictionary's write point (P, B, D)."""
        name = self._norm_at(layer, self.write)
        return g if name is None else self.norm_t(layer, name, g)

    def final_t(self, directions: Tensor, pos: int) -> Tensor:
        """Directions (B, D) at the final norm's output at ``pos`` -> at the final residual stream."""
        scale = self.scale("final")[pos].expand(len(directions), 1)
        return norm_transpose(self.model.ln_final, scale, directions.float())

    def read_vectors(self, layer: int, pos: Tensor, vectors: Tensor) -> Tensor:
        """Vectors (B, D) read at layer's read point at positions ``pos`` (B,) -> at the residual stream."""
        name = self._norm_at(layer, self.read)
        if name is None:
            return vectors
        norm = getattr(self.model.blocks[layer], name)
        return norm_transpose(norm, self.scale(f"{layer}.{name}")[pos], vectors)

    # --- the blocks' linear pieces ---------------------------------------------------------------------

    def skip_t(self, layer: int, grad: Tensor) -> Tensor:
        """The gradient through the transcoder's dense skip path, from the residual after the MLP to before it."""
        skip_t = self.weights(layer).skip_t
        assert skip_t is not None, "the dictionary has no skip path"
        return self.read_t(layer, self.write_t(layer, grad) @ skip_t.T)

    def attention_t(self, layer: int, grad: Tensor) -> Tensor:
        """The gradient through layer's frozen attention branch, from the residual after it to before it."""
        cfg, w = self.model.cfg, self.weights(layer)
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        P, B, D = grad.shape
        f = w.folded
        if f is not None and P == 1:  # the first position attends to itself alone
            return ((grad.reshape(B, D) @ f.first) @ f.v.view(K * E, D)).view(P, B, D)
        if f is not None:  # three products, the norms folded in (FoldedAttention)
            G = H // K
            z = (grad.reshape(P * B, D) @ f.o).view(P, B, H, E).permute(2, 0, 1, 3)  # (H, Pq, B, E)
            z = z.reshape(K, G * P, B * E)  # per key/value head, its query heads' rows one after another
            z = torch.bmm(f.pattern[:, :P, :, :P].reshape(K, P, G * P), z).view(K, P * B, E)  # (K, Pk*B, E)
            g = torch.mm(z[0], f.v[0])
            for k in range(1, K):
                g.addmm_(z[k], f.v[k])
            return g.view(P, B, D)
        g = self.norm_t(layer, "attn_post", grad) if "attn_post" in w.norms else grad
        z = (g @ w.o).view(P, B, H, E).permute(2, 0, 1, 3).reshape(H, P, B * E)  # (H, Pq, B*E)
        z = self.pattern_t(layer, z)  # (H, Pk, B*E): each key gathers from its queries
        z = z.view(K, H // K, P, B, E).sum(1)  # (K, Pk, B, E): heads sharing a key/value head
        z = z.permute(1, 2, 0, 3).reshape(P * B, K * E)
        g = (z @ w.v).view(P, B, -1)  # (P, B, D)
        return self.norm_t(layer, "ln1", g)

    def pattern_t(self, layer: int, z: Tensor) -> Tensor:
        """(H, Pq, X) -> (H, Pk, X): the transpose of layer's frozen pattern over the first P positions.

        Long prompts go by blocks of queries, each against only the keys it can see: the causal
        pattern's zero upper triangle is skipped (about half the work), and a pattern that is not kept
        is rebuilt a block at a time."""
        P = z.shape[1]
        size = P if P <= 2 * QUERY_BLOCK else QUERY_BLOCK  # short prompts: one product
        blocks = self.cache.patterns.blocks(layer, P, size)
        if size == P:
            return torch.bmm(next(blocks)[2][0].to(z.dtype).transpose(1, 2), z)
        out = torch.zeros_like(z)
        for start, stop, rows in blocks:  # rows (1, H, stop - start, stop)
            out[:, :stop].baddbmm_(rows[0].to(z.dtype).transpose(1, 2), z[:, start:stop])
        return out

    def attention_t_by_head(self, layer: int, grad: Tensor, pos: int) -> Tensor:
        """(P, H, D): a gradient (P, 1, D) that is nonzero only at query position ``pos``, carried through
        each head of layer's frozen attention separately to every key position, before the layer's
        pre-attention norm (summed over heads, it is :meth:`attention_t`)."""
        cfg, w = self.model.cfg, self.weights(layer)
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        g = self.norm_t(layer, "attn_post", grad) if "attn_post" in w.norms else grad  # (P, 1, D)
        z = (g[pos, 0] @ w.o).view(H, E)  # (H, E): the gradient at each head's mixed values
        w_v = w.v.view(K, E, -1)[torch.arange(H, device=z.device) // (H // K)]  # (H, E, D) per query head
        u = torch.einsum("he,hed->hd", z, w_v)  # (H, D) through W_V
        P = grad.shape[0]
        pattern = self.cache.patterns.rows(layer, pos, pos + 1)[0, :, 0].to(u.dtype)  # (H, pos + 1)
        pattern = torch.nn.functional.pad(pattern, (0, P - pos - 1))  # (H, P): the query at pos
        per_key = pattern.T[:, :, None] * u[None]  # (P, H, D)
        return self.norm_t(layer, "ln1", per_key)

    def contract(self, layer: int, grad: Tensor, rows: Tensor, sources: WriteSources) -> None:
        """Add into ``rows`` (B, C) the effect on each carried target of every source writing at ``layer``,
        from the gradient (P, B, D) at the residual after the layer's MLP: one batched product."""
        g = self.write_t(layer, grad)  # (P, B, D)
        P = g.shape[0]
        vals = torch.bmm(g, sources.vectors[:P].transpose(1, 2))  # (P, B, S)
        B, S = vals.shape[1], vals.shape[2]
        rows.index_add_(1, sources.columns[:P].flatten(), vals.transpose(0, 1).reshape(B, P * S))
        for pos, vectors, columns in sources.crowded:  # the crowded positions' surplus: (B, D) @ (D, X)
            if pos < P:
                rows.index_add_(1, columns, g[pos] @ vectors.T)

"""The residual stream entering a layer at one position, as a sum of labelled pieces.

In the local replacement model of a prompt, the residual stream entering layer ``l`` at position
``p`` is exactly

    embedding(p)
    + for every layer l' < l, through its frozen post-MLP norm when the dictionary writes before it:
        each active feature's write at p (a CLT feature: its writes into every layer l' < l it reaches),
        the error node (l', p), the skip path's output at p, the decoder bias
    + for every layer l' < l, through its frozen post-attention norm when there is one:
        each head's output at p (its frozen pattern over keys times its values), the output bias

The nodes of the graph (embedding, features, errors) are pieces; so are each head's output and the
skip path (which the graph carries through, not as nodes), and the constants (biases). The pieces
sum to the recorded residual stream to float precision: :func:`residual_terms` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.models.transformer import Norm
from clew.replacement import LocalReplacement


@dataclass
class Terms:
    """Labelled pieces of one residual-stream vector (or of its image on one side of an attention score)."""

    labels: list[str] = field(default_factory=list)
    """A short name per piece: ``L1/F12@6``, ``error L0@6``, ``token ' Dallas'@6``, ``head L1.H3@6``,
    ``skip L0@6``, ``biases`` (the residual stream's constants), ``query bias`` / ``key bias``."""
    kinds: list[str] = field(default_factory=list)
    """``embedding``, ``feature``, ``error`` (the graph's nodes), ``head``, ``skip``, ``bias``."""
    columns: list[int] = field(default_factory=list)
    """The piece's column in the local replacement model (its node number there), -1 for non-nodes."""
    vectors: list[Tensor] = field(default_factory=list)
    """Each piece's vector (D,) in float32."""

    def add(self, label: str, kind: str, vector: Tensor, column: int = -1) -> None:
        self.labels.append(label)
        self.kinds.append(kind)
        self.columns.append(column)
        self.vectors.append(vector.float())

    def stacked(self) -> Tensor:
        """(n, D) the vectors."""
        return torch.stack(self.vectors)

    def __len__(self) -> int:
        return len(self.labels)


def _linear(norm: Norm, scale: Tensor, x: Tensor) -> Tensor:
    """The linear part of a norm with a frozen scale (its bias, if any, left out)."""
    y = x.float()
    if norm.centred:
        y = y - y.mean(-1, keepdim=True)
    return y * scale.float() * (norm.weight.float() + norm.offset)


class _Through:
    """A frozen norm's linear part, or the identity where there is no norm."""

    def __init__(self, norm: Norm | None, scale: Tensor | None):
        self.norm, self.scale = norm, scale

    def __call__(self, v: Tensor) -> Tensor:
        return v.float() if self.norm is None else _linear(self.norm, self.scale, v)


def _norm_bias(norm: Norm) -> Tensor | None:
    return None if norm.bias is None else norm.bias.float()


@torch.no_grad()
def residual_terms(local: LocalReplacement, layer: int, pos: int, check: bool = True) -> Terms:
    """The residual stream entering ``layer`` at ``pos`` as labelled pieces (see the module docstring)."""
    model, tc, cache = local.model, local.tc, local.cache
    if not 0 <= layer < local.n_layers:
        raise ClewError(f"layer {layer} is out of range: the model has {local.n_layers} layers")
    if not 0 <= pos < local.n_pos:
        raise ClewError(f"position {pos} is out of range: the prompt has {local.n_pos} tokens")
    tokens = local.tokens[0].tolist()
    text = model.tokenizer.decode([tokens[pos]]) if model.tokenizer is not None else str(tokens[pos])
    terms = Terms()
    terms.add(f"token {text!r}@{pos}", "embedding", local.embeddings[pos], local.embed_column(pos))
    D = local.d_model
    biases = torch.zeros(D)
    write_norm = local.backward.write.norm  # the norm between the write point and the residual, if any
    feature_writes: dict[int, Tensor] = {}  # feature column -> its total write into this residual
    H = model.cfg.n_heads
    for src in range(layer):
        block = model.blocks[src]
        post = getattr(block, write_norm) if write_norm is not None else None
        post_scale = cache.scales[f"{src}.{write_norm}"][0, pos] if post is not None else None
        to_resid = _Through(post, post_scale)  # the write point -> the residual stream (linear part)
        if post is not None and _norm_bias(post) is not None:
            biases += _norm_bias(post)
        # features of every layer that writes into layer src, at this position
        for origin in tc.src_layers(src):
            sel = ((local.feat_layer == origin) & (local.feat_pos == pos)).nonzero().squeeze(1)
            if len(sel):
                rows = tc.decoder_vectors(origin, local.feat_index[sel], src).float()  # (n, D)
                writes = to_resid(rows * local.feat_act[sel, None].float())
                for column, w in zip(sel.tolist(), writes):
                    feature_writes[column] = feature_writes[column] + w if column in feature_writes else w
        terms.add(
            f"error L{src}@{pos}", "error", to_resid(local.errors[src, pos]), local.error_column(src, pos)
        )
        skip = tc.skip_term(src, local.read_input(src)[pos : pos + 1])
        if skip is not None:
            terms.add(f"skip L{src}@{pos}", "skip", to_resid(skip[0]))
        biases += to_resid(tc.decoder_bias(src))
        # attention: each head's output at pos under the frozen pattern
        attn = block.attn
        x = block.ln1(cache.resid_pre[src], cache.scales[f"{src}.ln1"])  # (1, P, D)
        values = attn.values(x)[0]  # (H, P, E)
        z = torch.einsum("hk,hke->he", cache.patterns[src][0, :, pos].to(values.dtype), values)  # (H, E)
        E = model.cfg.d_head
        heads = torch.einsum("he,dhe->hd", z, attn.o.weight.view(D, H, E))  # (H, D)
        attn_post = block.attn_post
        if attn.o.bias is not None:
            heads_bias = attn.o.bias.float()
        else:
            heads_bias = torch.zeros(D)
        if attn_post is not None:
            scale = cache.scales[f"{src}.attn_post"][0, pos]
            heads, heads_bias = _linear(attn_post, scale, heads), _linear(attn_post, scale, heads_bias)
            if _norm_bias(attn_post) is not None:
                heads_bias = heads_bias + _norm_bias(attn_post)
        for h in range(H):
            terms.add(f"head L{src}.H{h}@{pos}", "head", heads[h])
        biases += heads_bias.float()
    for column in sorted(feature_writes):
        name = f"L{int(local.feat_layer[column])}/F{int(local.feat_index[column])}@{pos}"
        terms.add(name, "feature", feature_writes[column], column)
    terms.add("biases", "bias", biases)
    if check:
        total, clean = terms.stacked().sum(0), cache.resid_pre[layer][0, pos].float()
        error = float((total - clean).abs().max() / clean.abs().max().clamp_min(1e-12))
        assert error < 1e-3, (
            f"the pieces of the residual at layer {layer}, position {pos} miss it by {error:.1e}"
        )
    return terms

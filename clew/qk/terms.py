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


def _norm_bias(norm: Norm) -> Tensor | None:
    return None if norm.bias is None else norm.bias.float()


class Pieces:
    """The pieces of a prompt's residual streams and heads' outputs, with what several calls share
    (every head's output at every position, per layer) computed once."""

    def __init__(self, local: LocalReplacement):
        self.local = local
        self._heads: dict[int, tuple[Tensor, Tensor]] = {}

    def heads(self, layer: int) -> tuple[Tensor, Tensor]:
        """(P, H, D) what each head of ``layer`` adds to the residual stream at each position under the
        frozen pattern (through the linear part of any post-attention norm), and (P, D) the branch's constant."""
        if layer not in self._heads:
            local, cache = self.local, self.local.cache
            block, cfg = local.model.blocks[layer], local.model.cfg
            D, H, E, P = local.d_model, cfg.n_heads, cfg.d_head, local.n_pos
            x = block.ln1(cache.resid_pre[layer], cache.scales[f"{layer}.ln1"])  # (1, P, D)
            values = block.attn.values(x)[0]  # (H, P, E)
            z = cache.patterns[layer][0].to(values.dtype) @ values  # (H, P, E)
            heads = torch.einsum("hpe,dhe->phd", z, block.attn.o.weight.view(D, H, E)).float()
            bias = block.attn.o.bias.float() if block.attn.o.bias is not None else torch.zeros(D)
            bias = bias.expand(P, D)
            post = block.attn_post
            if post is not None:
                scale = cache.scales[f"{layer}.attn_post"][0]  # (P, 1)
                heads, bias = _linear(post, scale[:, None], heads), _linear(post, scale, bias)
                if _norm_bias(post) is not None:
                    bias = bias + _norm_bias(post)
            self._heads[layer] = (heads, bias)
        return self._heads[layer]

    @torch.no_grad()
    def residual(self, layer: int, pos: int, check: bool = True) -> Terms:
        """The residual stream entering ``layer`` at ``pos`` as labelled pieces (the module docstring)."""
        local = self.local
        model, tc, cache = local.model, local.tc, local.cache
        if not 0 <= layer < local.n_layers:
            raise ClewError(f"layer {layer} is out of range: the model has {local.n_layers} layers")
        if not 0 <= pos < local.n_pos:
            raise ClewError(f"position {pos} is out of range: the prompt has {local.n_pos} tokens")
        token = int(local.tokens[0, pos])
        text = model.tokenizer.decode([token]) if model.tokenizer is not None else str(token)
        terms = Terms()
        terms.add(f"token {text!r}@{pos}", "embedding", local.embeddings[pos], local.embed_column(pos))
        biases = torch.zeros(local.d_model)
        write_norm = local.backward.write.norm  # the norm between the write point and the residual, if any
        feature_writes: dict[int, Tensor] = {}  # feature column -> its total write into this residual
        for src in range(layer):
            block = model.blocks[src]
            post = getattr(block, write_norm) if write_norm is not None else None
            scale = cache.scales[f"{src}.{write_norm}"][0, pos] if post is not None else None

            def to_resid(v: Tensor, post: Norm | None = post, scale: Tensor | None = scale) -> Tensor:
                return v.float() if post is None else _linear(post, scale, v)  # write point -> residual

            if post is not None and _norm_bias(post) is not None:
                biases += _norm_bias(post)
            # what the engine laid out at this write point: the error and every feature writing there
            sources = local.sources[src]
            vectors, columns = sources.vectors[pos], sources.columns[pos]
            for q, extra, extra_columns in sources.crowded:
                if q == pos:
                    vectors, columns = torch.cat([vectors, extra]), torch.cat([columns, extra_columns])
            writes = to_resid(vectors)
            for column, w in zip(columns.tolist(), writes):
                if column >= local.n_features:  # the error node of (src, pos)
                    terms.add(f"error L{src}@{pos}", "error", w, column)
                elif int(local.feat_pos[column]) == pos:  # (padding points at column 0 with a zero vector)
                    feature_writes[column] = feature_writes[column] + w if column in feature_writes else w
            skip = tc.skip_term(src, local.read_input(src)[pos : pos + 1])
            if skip is not None:
                terms.add(f"skip L{src}@{pos}", "skip", to_resid(skip[0]))
            biases += to_resid(tc.decoder_bias(src))
            heads, heads_bias = self.heads(src)
            for h in range(model.cfg.n_heads):
                terms.add(f"head L{src}.H{h}@{pos}", "head", heads[pos, h])
            biases += heads_bias[pos]
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

    @torch.no_grad()
    def head_value(self, layer: int, head: int, pos: int, check: bool = True) -> Terms:
        """What head ``head`` of ``layer`` wrote at ``pos``, split over the pieces of the residual streams
        it read: each piece at each key position it attends to, through the frozen pre-attention norm,
        the head's value and output projections and any post-attention norm, weighted by the frozen
        pattern. The constants (norm and value biases) are one piece, ``value bias``."""
        local, cache = self.local, self.local.cache
        block, cfg = local.model.blocks[layer], local.model.cfg
        D, E = local.d_model, cfg.d_head
        kv = head // (cfg.n_heads // cfg.n_kv_heads)
        w_v = block.attn.v.weight.float().view(cfg.n_kv_heads, E, D)[kv]  # (E, D)
        w_o = block.attn.o.weight.float().view(D, cfg.n_heads, E)[:, head]  # (D, E)
        v_bias = block.attn.v.bias.float().view(cfg.n_kv_heads, E)[kv] if block.attn.v.bias is not None else 0
        ln_bias = _norm_bias(block.ln1)
        inner = (ln_bias @ w_v.T if ln_bias is not None else torch.zeros(E)) + v_bias
        pattern = cache.patterns[layer][0, head, pos].float()  # (P,)
        out = Terms()
        constant = torch.zeros(D)
        for key in pattern.nonzero().squeeze(1).tolist():
            pieces = self.residual(layer, key, check=False)
            scale = cache.scales[f"{layer}.ln1"][0, key]
            through = _linear(block.ln1, scale, pieces.stacked()) @ w_v.T @ w_o.T  # (n, D)
            for i, label in enumerate(pieces.labels):
                name = f"{label}@{key}" if pieces.kinds[i] == "bias" else label
                out.add(name, pieces.kinds[i], float(pattern[key]) * through[i], pieces.columns[i])
            constant += float(pattern[key]) * (inner @ w_o.T)
        out.add("value bias", "bias", constant)
        vectors = out.stacked()
        if block.attn_post is not None:
            vectors = _linear(block.attn_post, cache.scales[f"{layer}.attn_post"][0, pos], vectors)
        out.vectors = list(vectors)
        if check:
            whole = self.heads(layer)[0][pos, head]
            error = float((vectors.sum(0) - whole).abs().max() / whole.abs().max().clamp_min(1e-12))
            assert error < 1e-3, (
                f"the pieces of head L{layer}.H{head}'s output at {pos} miss it by {error:.1e}"
            )
        return out


def residual_terms(local: LocalReplacement, layer: int, pos: int, check: bool = True) -> Terms:
    """The residual stream entering ``layer`` at ``pos`` as labelled pieces (see the module docstring)."""
    return Pieces(local).residual(layer, pos, check)


def head_value_terms(local: LocalReplacement, layer: int, head: int, pos: int, check: bool = True) -> Terms:
    """Head ``head`` of ``layer``'s output at ``pos`` as the pieces it read (:meth:`Pieces.head_value`)."""
    return Pieces(local).head_value(layer, head, pos, check)

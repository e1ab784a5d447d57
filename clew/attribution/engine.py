"""The attribution engine: the local replacement model of one prompt and its exact linear backward pass.

One clean forward pass records what is frozen (attention patterns, normalisation scales) and what the
nodes are (active features, error vectors, token embeddings). Between nodes the model is then linear,
so the direct effect of every source on a target is the target's vector carried backwards through the
frozen residual stream, dotted with the source's vector where the source writes. ``Engine.rows`` does
that for a batch of targets at once, written out by hand rather than through autograd: no MLP, no
forward replicated per target, no work above a target's layer or after its position, and at each
layer's write point one batched matrix product fills whole rows of the adjacency matrix.

Shapes: B targets in a batch, P positions, D d_model, H heads, K key/value heads, E d_head,
N active features, C columns (sources).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.models.transformer import ActivationCache, Norm, Transformer


@dataclass
class Targets:
    """A batch of targets, each a vector at one place in the residual stream."""

    layer: Tensor
    """(B,) where the vector is read: ``l`` = the residual before layer l's MLP, ``n_layers`` = the final residual."""
    pos: Tensor
    """(B,) position."""
    vectors: Tensor
    """(B, D) the gradient of the target's value with respect to the residual stream there."""

    def __len__(self) -> int:
        return len(self.pos)


@dataclass
class _WriteSources:
    """Every source that writes at one layer's MLP write point, padded position by position."""

    vectors: Tensor
    """(P, S, D) the vector each source writes (activation times decoder row, or the error), zero-padded."""
    columns: Tensor
    """(P, S) the source's column in the adjacency rows (padding: column 0, with a zero vector)."""
    crowded: list[tuple[int, Tensor, Tensor]]
    """Sources beyond the padded width S at the few crowded positions (the first token often has many
    more features than the rest): per such position, (position, (X, D) vectors, (X,) columns)."""


class Engine:
    """The frozen local replacement model of one prompt, with columns laid out as
    ``[active features (layer, position, index order) | errors (layer-major) | embeddings]``."""

    def __init__(self, model: Transformer, transcoder, tokens: Tensor, dtype: torch.dtype = torch.float32):
        if tokens.dim() == 1:
            tokens = tokens[None]
        self.model, self.tc, self.dtype = model, transcoder, dtype
        self.device = model.embed.weight.device
        tokens = tokens.to(self.device)
        cfg = model.cfg
        self.n_layers, self.n_pos, self.d_model = cfg.n_layers, tokens.shape[1], cfg.d_model
        tc_cfg = transcoder.cfg
        missing = [l for l in range(cfg.n_layers) if l not in set(tc_cfg.layers or range(cfg.n_layers))]
        if missing:
            raise ClewError(
                f"the dictionary has no transcoder for layers {missing}: every MLP must be replaced"
            )
        if tc_cfg.d_model != cfg.d_model or tc_cfg.n_layers != cfg.n_layers:
            raise ClewError(
                f"the dictionary is for d_model={tc_cfg.d_model}, {tc_cfg.n_layers} layers; "
                f"the model has d_model={cfg.d_model}, {cfg.n_layers} layers"
            )
        self.read, self.write, self.cross_layer = tc_cfg.read, tc_cfg.write, tc_cfg.kind == "clt"
        self.tokens = tokens
        with torch.no_grad():
            result = model.run(tokens, record=True)
        assert result.cache is not None
        self.cache: ActivationCache = result.cache
        self.logits: Tensor = result.logits[0]  # (P, V)
        with torch.no_grad():
            self._find_nodes()
            self._build_sources()

    # --- nodes -------------------------------------------------------------------------------------------

    def read_input(self, layer: int) -> Tensor:
        """(P, D) what layer's transcoder reads in the clean run."""
        source = self.cache.mlp_in if self.read == "mlp_in" else self.cache.resid_mid
        return source[layer][0]

    def true_output(self, layer: int) -> Tensor:
        """(P, D) what the MLP really wrote at the transcoder's write point."""
        source = self.cache.mlp_out if self.write == "mlp_out" else self.cache.mlp_delta
        return source[layer][0]

    def _find_nodes(self) -> None:
        L, P = self.n_layers, self.n_pos
        self.pre_acts: list[Tensor] = []  # per layer (P, F): feature pre-activations
        acts: dict[int, Tensor] = {}
        layers, positions, indices, values = [], [], [], []
        for layer in range(L):
            pre = self.tc.pre_activations(layer, self.read_input(layer))
            act = self.tc.activate(layer, pre)
            self.pre_acts.append(pre)
            acts[layer] = act
            pos, idx = act.nonzero(as_tuple=True)
            layers.append(torch.full_like(pos, layer))
            positions.append(pos)
            indices.append(idx)
            values.append(act[pos, idx])
        self.acts = acts
        self.feat_layer: Tensor = torch.cat(layers)  # (N,)
        self.feat_pos: Tensor = torch.cat(positions)  # (N,)
        self.feat_index: Tensor = torch.cat(indices)  # (N,)
        self.feat_act: Tensor = torch.cat(values)  # (N,)
        self.n_features = len(self.feat_layer)
        self.embeddings: Tensor = self.cache.resid_pre[0][0]  # (P, D): the residual stream entering layer 0
        self.error_offset = self.n_features
        self.embed_offset = self.n_features + L * P
        self.n_columns = self.embed_offset + P

    def error_column(self, layer: int, pos: int) -> int:
        return self.error_offset + layer * self.n_pos + pos

    def embed_column(self, pos: int) -> int:
        return self.embed_offset + pos

    def _build_sources(self) -> None:
        """For each write layer, the padded (P, S, D) block of source vectors written there, and the
        error nodes: what the MLP really wrote minus the features' writes, decoder bias and skip term
        (the decoder rows are read once, for both)."""
        L, P, D = self.n_layers, self.n_pos, self.d_model
        self.sources: list[_WriteSources] = []
        errors = []
        feature_columns = torch.arange(self.n_features, device=self.device)
        for dst in range(L):
            vecs, cols, pos = [], [], []
            src_layers = range(dst + 1) if self.cross_layer else [dst]
            for src in src_layers:
                sel = self.feat_layer == src
                if not sel.any():
                    continue
                dec = self.tc.decoder_vectors(src, self.feat_index[sel], dst)  # (n, D)
                vecs.append(dec.float() * self.feat_act[sel, None].float())  # in float32 whatever is stored
                cols.append(feature_columns[sel])
                pos.append(self.feat_pos[sel])
            recon = self.tc.decoder_bias(dst).float().expand(P, D).clone()  # (P, D)
            if vecs:
                recon.index_add_(0, torch.cat(pos), torch.cat(vecs))
            skip = self.tc.skip_term(dst, self.read_input(dst))
            if skip is not None:
                recon += skip.float()
            errors.append(self.true_output(dst).float() - recon)
            vecs.insert(0, errors[-1])
            cols.insert(0, self.error_offset + dst * P + torch.arange(P, device=self.device))
            pos.insert(0, torch.arange(P, device=self.device))
            v, c, p = torch.cat(vecs), torch.cat(cols), torch.cat(pos)
            order = torch.argsort(p, stable=True)
            v, c, p = v[order], c[order], p[order]
            counts = torch.bincount(p, minlength=P)
            slot = torch.arange(len(p), device=self.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts
            )
            # pad to what most positions need; the crowded positions' surplus is kept per position
            width = max(1, int(counts.float().quantile(0.95).ceil()))
            inside = slot < width
            padded = torch.zeros(P, width, D, dtype=self.dtype, device=self.device)
            padded[p[inside], slot[inside]] = v[inside].to(self.dtype)
            # padding points at column 0 with a zero vector: it adds exactly 0 there, and no mask is needed
            columns = torch.zeros((P, width), dtype=torch.long, device=self.device)
            columns[p[inside], slot[inside]] = c[inside]
            out = ~inside
            crowded = [
                (int(q), v[out & (p == q)].to(self.dtype), c[out & (p == q)])
                for q in p[out].unique().tolist()
            ]
            self.sources.append(_WriteSources(padded, columns, crowded))
        self.errors: Tensor = torch.stack(errors)  # (L, P, D)

    # --- targets -----------------------------------------------------------------------------------------

    def _norm_transpose(self, norm: Norm, scale: Tensor, g: Tensor, weight: Tensor | None = None) -> Tensor:
        """The transpose of a frozen norm: a gradient at its output -> at its input. ``scale`` broadcasts
        against ``g``; ``weight`` is the norm's ``w + offset`` when already prepared."""
        if weight is None:
            weight = norm.weight.to(g.dtype) + norm.offset
        g = g * (weight * scale.to(g.dtype))
        if norm.centred:
            g = g - g.mean(-1, keepdim=True)
        return g

    def _scale(self, name: str, upto: int | None = None) -> Tensor:
        """(P, 1) a frozen normalisation scale."""
        return self.cache.scales[name][0, :upto]

    def feature_targets(self, features: Tensor) -> Targets:
        """Targets for the pre-activations of the given active features (indices into the feature table)."""
        layer, pos, index = self.feat_layer[features], self.feat_pos[features], self.feat_index[features]
        vectors = torch.empty(len(features), self.d_model, device=self.device)
        for l in layer.unique().tolist():
            sel = layer == l
            enc = self.tc.encoder_vectors(l, index[sel]).float()  # (n, D)
            if self.read == "mlp_in":
                block = self.model.blocks[l]
                enc = self._norm_transpose(block.ln2, self._scale(f"{l}.ln2")[pos[sel]], enc)
            vectors[sel] = enc
        return Targets(layer, pos, vectors)

    def direction_targets(self, directions: Tensor, pos: int | None = None) -> Targets:
        """Targets for directions (B, D) at the final norm's output (e.g. an unembedding row minus the mean)."""
        pos = self.n_pos - 1 if pos is None else pos
        scale = self._scale("final")[pos].expand(len(directions), 1)
        vectors = self._norm_transpose(self.model.ln_final, scale, directions.float())
        n = len(directions)
        full = dict(size=(n,), device=self.device)
        return Targets(
            torch.full(fill_value=self.n_layers, **full), torch.full(fill_value=pos, **full), vectors
        )

    def logit_directions(self, token_ids: Tensor) -> Tensor:
        """(T, D) ``W_U[token] - mean over the vocabulary of W_U``."""
        w = self.model.unembed.weight.float()
        return w[token_ids] - w.mean(0)

    # --- the backward pass -------------------------------------------------------------------------------
    #
    # The gradient is kept position-major, (P, B, D): every product below is then one large matrix
    # product (or one per head), never thousands of tiny ones.

    @staticmethod
    def batch_order(layer: Tensor, pos: Tensor) -> tuple[Tensor, list[int]]:
        """The order in which :meth:`rows` processes a batch, and the sizes of its chunks.

        The batch is split by position into up to 8 chunks, so that targets early in the prompt do
        not pay for the positions after them (attention costs grow with the square of the positions
        covered); within a chunk, targets go from the highest layer down, so that at each layer only
        the leading targets, those at or above it, are carried (nothing below a target's layer
        reaches it). A caller that passes targets already in this order gets its rows written in place."""
        B = len(pos)
        by_pos = torch.argsort(pos, stable=True)
        sizes = [len(c) for c in by_pos.chunk(max(1, min(8, B // 32)))] if B else []
        parts, start = [], 0
        for n in sizes:
            chunk = by_pos[start : start + n]
            parts.append(chunk[torch.argsort(layer[chunk], descending=True, stable=True)])
            start += n
        order = torch.cat(parts) if parts else by_pos
        return order, sizes

    def rows(self, targets: Targets, out: Tensor | None = None) -> Tensor:
        """(B, C) the direct effect of every source on each target, written into ``out`` when given
        (in place, chunk by chunk, when the targets come in :meth:`batch_order`)."""
        B = len(targets)
        if out is None:
            out = torch.zeros(B, self.n_columns, dtype=self.dtype, device=self.device)
        else:
            out.zero_()
        order, sizes = self.batch_order(targets.layer, targets.pos)
        in_place = bool((order == torch.arange(B, device=order.device)).all())
        start = 0
        with torch.no_grad():
            for n in sizes:
                chunk = order[start : start + n]
                part = Targets(targets.layer[chunk], targets.pos[chunk], targets.vectors[chunk])
                if in_place:
                    self._rows(part, out[start : start + n])
                else:
                    out[chunk] = self._rows(
                        part, torch.zeros(n, self.n_columns, dtype=self.dtype, device=self.device)
                    )
                start += n
        return out

    def _rows(self, targets: Targets, rows: Tensor) -> Tensor:
        """Fill ``rows`` (B, C), zero on entry, for a batch of targets sorted by descending layer.

        At each layer only the leading targets whose layer is at or above it are carried: ``grad[:, :n]``."""
        L, D, dt = self.n_layers, self.d_model, self.dtype
        B = len(targets)
        P = int(targets.pos.max()) + 1  # nothing after the last target position matters
        grad = torch.zeros(P, B, D, dtype=dt, device=self.device)
        batch = torch.arange(B, device=self.device)
        layers = targets.layer.tolist()
        assert all(a >= b for a, b in zip(layers, layers[1:])), "targets must come by descending layer"
        negated = [-t for t in layers]  # ascending, for bisection
        start = min(layers[0], L - 1)  # above the highest target nothing is written that it could see

        def inject(a: int, b: int) -> None:  # targets a..b-1 start here
            grad[targets.pos[a:b], batch[a:b]] += targets.vectors[a:b].to(dt)

        inject(0, bisect.bisect_left(negated, -start))  # targets read after the last layer (logits)
        for layer in range(start, -1, -1):
            above = bisect.bisect_left(negated, -layer)  # targets above this layer's write point
            if above:
                self._contract(layer, grad[:, :above], rows[:above])
                if self.tc.cfg.skip:
                    grad[:, :above] += self._skip_transpose(layer, grad[:, :above])
            reach = bisect.bisect_right(negated, -layer)  # and those reading at this layer
            inject(above, reach)
            grad[:, :reach] += self._attention_transpose(layer, grad[:, :reach])
        rows[:, self.embed_offset : self.embed_offset + P] = torch.einsum(
            "pbd,pd->bp", grad, self.embeddings[:P].to(dt)
        )
        return rows

    def _weights(self, layer: int) -> dict[str, Tensor]:
        """Layer's matrices and norm weights in the engine's dtype, prepared once."""
        if not hasattr(self, "_prepared"):
            self._prepared: dict[int, dict[str, Tensor]] = {}
        if layer not in self._prepared:
            cfg, block, dt = self.model.cfg, self.model.blocks[layer], self.dtype
            w = {
                "o": block.attn.o.weight.to(dt),  # (D, H*E)
                "v": block.attn.v.weight.to(dt),  # (K*E, D)
            }
            for name in ("ln1", "attn_post", "ln2", "mlp_post"):
                norm = getattr(block, name)
                if norm is not None:
                    w[name] = (norm.weight.float() + norm.offset).to(dt)
            if self.tc.cfg.skip:
                eye = torch.eye(cfg.d_model, dtype=torch.float32, device=self.device)
                w["skip_t"] = self.tc.skip_term(layer, eye).to(dt)  # (D, D) = W_skip^T
            self._prepared[layer] = w
        return self._prepared[layer]

    def _norm_t(self, layer: int, name: str, g: Tensor) -> Tensor:
        """The transpose of layer's frozen norm ``name`` on a (P, B, D) gradient."""
        scale = self.cache.scales[f"{layer}.{name}"][0, : g.shape[0], :, None]  # (P, 1, 1)
        norm = getattr(self.model.blocks[layer], name)
        return self._norm_transpose(norm, scale, g, self._weights(layer)[name])

    def _write_grad(self, layer: int, grad: Tensor) -> Tensor:
        """The gradient at layer's write point, from the gradient at the residual after the MLP."""
        if self.write == "mlp_out" and self.model.blocks[layer].mlp_post is not None:
            return self._norm_t(layer, "mlp_post", grad)
        return grad

    def _contract(self, layer: int, grad: Tensor, rows: Tensor) -> None:
        """Fill the rows' entries for every source writing at ``layer``: one batched product per layer."""
        g = self._write_grad(layer, grad)  # (P, B, D)
        src = self.sources[layer]
        P = g.shape[0]
        vals = torch.bmm(g, src.vectors[:P].transpose(1, 2))  # (P, B, S)
        B, S = vals.shape[1], vals.shape[2]
        rows.index_add_(1, src.columns[:P].flatten(), vals.transpose(0, 1).reshape(B, P * S))
        for pos, vectors, columns in src.crowded:  # the crowded positions' surplus: (B, D) @ (D, X)
            if pos < P:
                rows.index_add_(1, columns, g[pos] @ vectors.T)

    def _skip_transpose(self, layer: int, grad: Tensor) -> Tensor:
        """The gradient through the transcoder's dense skip path, from its output back to the residual."""
        g = self._write_grad(layer, grad) @ self._weights(layer)["skip_t"].T
        return self._norm_t(layer, "ln2", g) if self.read == "mlp_in" else g

    def _attention_transpose(self, layer: int, grad: Tensor) -> Tensor:
        """The gradient through layer's frozen attention branch, from the residual after it to before it."""
        cfg, w = self.model.cfg, self._weights(layer)
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
        P, B, _ = grad.shape
        g = self._norm_t(layer, "attn_post", grad) if "attn_post" in w else grad
        z = (g @ w["o"]).view(P, B, H, E).permute(2, 0, 1, 3).reshape(H, P, B * E)  # (H, Pq, B*E)
        pattern = self.cache.patterns[layer][0, :, :P, :P].to(g.dtype)  # (H, Pq, Pk)
        z = torch.bmm(pattern.transpose(1, 2), z)  # (H, Pk, B*E): each key gathers from its queries
        z = z.view(K, H // K, P, B, E).sum(1)  # (K, Pk, B, E): heads sharing a key/value head
        z = z.permute(1, 2, 0, 3).reshape(P * B, K * E)
        g = (z @ w["v"]).view(P, B, -1)  # (P, B, D)
        return self._norm_t(layer, "ln1", g)

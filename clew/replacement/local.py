"""The local replacement model of one prompt: frozen at a clean run, with its nodes laid out.

One clean forward pass records what is frozen (attention patterns, normalisation scales) and finds
the nodes: every active feature (its activation and pre-activation), one error per (layer, position)
(what the MLP really wrote minus the dictionary's reconstruction), one embedding per position.
Between nodes the model is then linear, and :attr:`LocalReplacement.backward` holds its transposes.

Shapes: P positions, D d_model, N active features, C columns (sources, laid out by :class:`NodeLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.models import ActivationCache, ModelConfig, Transformer
from clew.replacement.backward import Backward, WriteSources
from clew.replacement.layout import NodeLayout


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


KEPT_PATTERNS_BYTES = 2 * 2**30
"""Attention patterns up to this size (all layers, float32) are kept after the clean run; beyond it
(SmolLM2-135M past about 1,400 tokens) they are rebuilt block by block when used
(:class:`clew.models.Patterns`), so memory stays linear in the prompt's length."""


def keeps_patterns(cfg: ModelConfig, n_pos: int) -> bool:
    """Whether the clean run keeps its attention patterns for a prompt of ``n_pos`` tokens."""
    return cfg.n_layers * cfg.n_heads * n_pos * n_pos * 4 <= KEPT_PATTERNS_BYTES


class LocalReplacement:
    """The model with its MLPs replaced by ``transcoder``, frozen at the clean run of ``tokens``.

    Columns (sources) are laid out as ``[active features (layer, position, index order) | errors
    (layer-major) | embeddings]`` (:attr:`layout`)."""

    def __init__(
        self, model: Transformer, transcoder: Transcoder, tokens: Tensor, dtype: torch.dtype = torch.float32
    ):
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
        self.tokens = tokens
        with torch.no_grad():
            result = model.run(tokens, record=True, keep_patterns=keeps_patterns(cfg, tokens.shape[1]))
        assert result.cache is not None
        self.cache: ActivationCache = result.cache
        self.logits: Tensor = result.logits[0]  # (P, V)
        self.backward = Backward(model, self.cache, transcoder, dtype)
        with torch.no_grad():
            self._find_nodes()
            self._build_sources()

    # --- nodes -------------------------------------------------------------------------------------------

    def read_input(self, layer: int) -> Tensor:
        """(P, D) what layer's transcoder reads in the clean run."""
        return self.cache.read(self.tc.cfg.read, layer)[0]

    def true_output(self, layer: int) -> Tensor:
        """(P, D) what the MLP really wrote at the transcoder's write point."""
        return self.cache.written(self.tc.cfg.write, layer)[0]

    def _find_nodes(self) -> None:
        L, P = self.n_layers, self.n_pos
        acts: dict[int, Tensor] = {}
        layers, positions, indices, values = [], [], [], []
        for layer in range(L):
            pre = self.tc.pre_activations(layer, self.read_input(layer))
            act = self.tc.activate(layer, pre)
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
        self.layout = NodeLayout(self.n_features, L, P)
        self.error_offset = self.layout.error_offset
        self.embed_offset = self.layout.embed_offset
        self.n_columns = self.layout.n_sources

    def error_column(self, layer: int, pos: int) -> int:
        return self.layout.error(layer, pos)

    def embed_column(self, pos: int) -> int:
        return self.layout.embedding(pos)

    def source_position(self, column: int) -> int:
        """The position where the source in column ``column`` writes."""
        if not 0 <= column < self.n_columns:
            raise ClewError(f"source column {column} is out of range (0..{self.n_columns - 1})")
        kind = self.layout.kind(column)
        if kind == "feature":
            return int(self.feat_pos[column])
        if kind == "error":
            return self.layout.error_layer_pos(column)[1]
        return column - self.embed_offset

    def feature_numbers(self, features: Tensor, describe=None) -> Tensor:
        """(n,) the numbers in this model's feature table of features given as (n, 3) ``[layer, position,
        index]`` rows; a one-line error for one that is not active here (``describe(i)`` names row i)."""
        table = {
            key: n
            for n, key in enumerate(
                zip(self.feat_layer.tolist(), self.feat_pos.tolist(), self.feat_index.tolist())
            )
        }
        out = []
        for i, key in enumerate(features.tolist()):
            number = table.get(tuple(key))
            if number is None:
                name = describe(i) if describe is not None else f"feature {key}"
                raise ClewError(f"{name} is not active when the model and dictionary rerun the prompt")
            out.append(number)
        return torch.tensor(out, dtype=torch.long, device=self.device)

    def _build_sources(self) -> None:
        """For each write layer, the padded (P, S, D) block of source vectors written there, and the
        error nodes: what the MLP really wrote minus the features' writes, decoder bias and skip term
        (the decoder rows are read once, for both)."""
        L, P, D = self.n_layers, self.n_pos, self.d_model
        self.sources: list[WriteSources] = []
        errors = []
        feature_columns = torch.arange(self.n_features, device=self.device)
        for dst in range(L):
            vecs, cols, pos = [], [], []
            for src in self.tc.src_layers(dst):
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
            self.sources.append(WriteSources(padded, columns, crowded))
        self.errors: Tensor = torch.stack(errors)  # (L, P, D)

    # --- targets -----------------------------------------------------------------------------------------

    def feature_targets(self, features: Tensor) -> Targets:
        """Targets for the pre-activations of the given active features (indices into the feature table)."""
        layer, pos, index = self.feat_layer[features], self.feat_pos[features], self.feat_index[features]
        vectors = torch.empty(len(features), self.d_model, device=self.device)
        for l in layer.unique().tolist():
            sel = layer == l
            enc = self.tc.encoder_vectors(l, index[sel]).float()  # (n, D)
            vectors[sel] = self.backward.read_vectors(l, pos[sel], enc)
        return Targets(layer, pos, vectors)

    def direction_targets(self, directions: Tensor, pos: int | None = None) -> Targets:
        """Targets for directions (B, D) at the final norm's output (e.g. an unembedding row minus the mean)."""
        pos = self.n_pos - 1 if pos is None else pos
        vectors = self.backward.final_t(directions, pos)
        n = len(directions)
        full = dict(size=(n,), device=self.device)
        return Targets(
            torch.full(fill_value=self.n_layers, **full), torch.full(fill_value=pos, **full), vectors
        )

    def logit_directions(self, token_ids: Tensor) -> Tensor:
        """(T, D) ``W_U[token] - mean over the vocabulary of W_U``."""
        w = self.model.unembed.weight.float()
        return w[token_ids] - w.mean(0)

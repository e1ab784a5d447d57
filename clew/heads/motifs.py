"""Attention-head motifs: previous-token, duplicate-token and induction heads, and copying OV circuits.

The pattern scores are measured on *repeated random sequences*: the family's beginning-of-sequence
token when its tokenizer adds one, then R distinct random tokens, then the same R tokens again. With
``o`` the offset of the first random token (1 after a BOS, else 0), every score is a mean attention
probability, so in [0, 1]:

* previous-token score: the attention from position i to i - 1, over every i > o;
* duplicate-token score: the attention from a token's second occurrence i (o + R <= i < o + 2R) to
  its first occurrence i - R;
* induction score: the attention from the same positions i to i - R + 1, the token that followed the
  current token's previous occurrence.

The copying score is a property of the weights alone: it asks whether the head's OV circuit, read
from token embedding to logits, maps each token to itself. For head h of layer l the full circuit is
the (V, V) matrix ``M = E_l W_V^h W_O^h N U^T``, where

* ``E_l`` (V, D) holds the token embeddings as layer l's first norm sees them: each embedding
  (times the family's embedding scale) normalised like a residual stream (centred for LayerNorm,
  divided by its RMS or standard deviation) and multiplied by the norm's weight;
* ``W_V^h`` (D, E) is the value head that query head h reads (under grouped-query attention,
  key/value head ``h // (H / K)``), ``W_O^h`` (E, D) the head's slice of the output projection, and
  a post-attention norm (Gemma) contributes its weight (and centring);
* ``N`` is the final norm's linear part (its weight, and centring for LayerNorm) and ``U`` the unembedding.

The positive scales of the norms at run time, biases (token-independent offsets) and logit
soft-capping (monotonic) are left out: none of them changes which token a row of M favours. The
score is the fraction of the eigenvalue mass of M that is positive,
``(1 + sum_i Re(lambda_i) / sum_i |lambda_i|) / 2``, in [0, 1]: near 1 for a head that copies (the
circuit raises the attended token's own logit), near 0 for one that suppresses it, about 1/2 for
neither. The nonzero eigenvalues of M are those of the (E, E) matrix ``W_O^h N U^T E_l W_V^h``,
so M itself is never formed.

Shapes: B sequences, P positions, L layers, H heads, K key/value heads, E d_head, D d_model, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.models.transformer import Norm, Transformer

SCORES = ("previous_token", "duplicate_token", "induction", "copying")


@dataclass
class RepeatedSequences:
    tokens: Tensor
    """(B, P) token ids: an optional BOS, R random tokens, the same R tokens again."""
    offset: int
    """Position of the first random token: 1 after a BOS, else 0."""
    length: int
    """R, the length of one repeat."""

    @property
    def second(self) -> Tensor:
        """(R,) the positions of the second repeat."""
        return torch.arange(self.offset + self.length, self.offset + 2 * self.length)


def bos_token(model: Transformer) -> int | None:
    """The token the family's tokenizer puts first, or None (no tokenizer, or none is added)."""
    tok = model.tokenizer
    if tok is None or getattr(tok, "bos_token_id", None) is None:
        return None
    ids = list(tok("x")["input_ids"])
    return tok.bos_token_id if ids and ids[0] == tok.bos_token_id else None


def repeated_sequences(
    model: Transformer, n_seqs: int = 8, length: int | None = None, seed: int = 0
) -> RepeatedSequences:
    """``n_seqs`` sequences of ``length`` distinct random ordinary tokens, each repeated twice."""
    bos = bos_token(model)
    offset = 0 if bos is None else 1
    room = (model.cfg.n_ctx - offset) // 2
    length = min(50, room) if length is None else length
    if length < 2:
        raise ClewError(f"the repeat length must be at least 2, got {length}")
    if length > room:
        raise ClewError(f"a repeat of {length} tokens twice does not fit the context of {model.cfg.n_ctx}")
    if n_seqs < 1:
        raise ClewError(f"the number of sequences must be positive, got {n_seqs}")
    vocab = model.cfg.vocab_size
    tok = model.tokenizer
    if tok is not None and len(tok) > 2 * length:  # rows past the tokenizer's vocabulary are padding
        vocab = min(vocab, len(tok))
    special = set(getattr(tok, "all_special_ids", []) or []) if tok is not None else set()
    candidates = torch.tensor([i for i in range(vocab) if i not in special])
    if len(candidates) < length:
        raise ClewError(
            f"the vocabulary has {len(candidates)} ordinary tokens, fewer than the repeat length {length}"
        )
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_seqs):
        first = candidates[torch.randperm(len(candidates), generator=g)[:length]]
        head = [torch.tensor([bos])] if bos is not None else []
        rows.append(torch.cat([*head, first, first]))
    return RepeatedSequences(torch.stack(rows), offset, length)


@dataclass
class HeadScores:
    """Per-head scores, each (L, H) in [0, 1]; see the module docstring for their definitions."""

    previous_token: Tensor
    duplicate_token: Tensor
    induction: Tensor
    copying: Tensor

    def get(self, name: str) -> Tensor:
        if name not in SCORES:
            raise ClewError(f"unknown head score {name!r}; known: {', '.join(SCORES)}")
        return getattr(self, name)

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads as (layer, head, score)."""
        s = self.get(name)
        order = s.flatten().argsort(descending=True)[:k]
        H = s.shape[1]
        return [(int(i) // H, int(i) % H, float(s.flatten()[i])) for i in order]


@torch.no_grad()
def pattern_scores(model: Transformer, seqs: RepeatedSequences, batch: int = 4) -> dict[str, Tensor]:
    """The three attention-pattern scores, each (L, H), averaged over the sequences."""
    device = model.embed.weight.device
    total: dict[str, Tensor] = {}
    for chunk in seqs.tokens.split(batch):
        cache = model.run(chunk.to(device), record=True).cache
        assert cache is not None
        part = scores_from_patterns(cache.patterns, seqs)
        for name, s in part.items():
            total[name] = total.get(name, 0) + s.double() * len(chunk)
    return {name: (s / len(seqs.tokens)).float() for name, s in total.items()}


def scores_from_patterns(patterns: list[Tensor], seqs: RepeatedSequences) -> dict[str, Tensor]:
    """The three pattern scores, each (L, H), from per-layer patterns (b, H, P, P) of repeated sequences."""
    o, R = seqs.offset, seqs.length
    second = seqs.second
    after = torch.arange(o + 1, o + 2 * R)  # every position with a random token before it
    out: dict[str, list[Tensor]] = {name: [] for name in SCORES[:3]}
    for pattern in patterns:
        p = pattern.float().cpu()  # (b, H, P, P)
        out["previous_token"].append(p[:, :, after, after - 1].mean((0, 2)))
        out["duplicate_token"].append(p[:, :, second, second - R].mean((0, 2)))
        out["induction"].append(p[:, :, second, second - R + 1].mean((0, 2)))
    return {name: torch.stack(rows) for name, rows in out.items()}


def _norm_matrix(norm: Norm, d: int) -> Tensor:
    """(D, D) the linear part of a norm up to its positive run-time scale: ``x -> (centre(x)) * w``."""
    m = torch.diag(norm.weight.detach().float().cpu() + norm.offset)
    if norm.centred:
        m = (torch.eye(d) - 1.0 / d) @ m
    return m


@torch.no_grad()
def copying_scores(model: Transformer) -> Tensor:
    """(L, H) the fraction of positive eigenvalue mass of each head's full OV circuit (module docstring)."""
    cfg = model.cfg
    L, H, K, E, D = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    emb = model.embed.weight.detach().float().cpu() * cfg.embed_scale  # (V, D)
    if cfg.norm == "layer":
        emb = emb - emb.mean(-1, keepdim=True)
    normed = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)  # (V, D), before weights
    unembed = model.unembed.weight.detach().float().cpu()  # (V, D)
    to_logits = _norm_matrix(model.ln_final, D)  # (D, D) the final norm's linear part
    core = to_logits @ (unembed.T @ normed)  # (D, D) = N U^T (E without the layer's norm weight)
    out = torch.empty(L, H)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        g = core * (block.ln1.weight.detach().float().cpu() + block.ln1.offset)[None, :]  # (D, D) N U^T E_l
        w_v = attn.v.weight.detach().float().cpu().view(K, E, D)  # (K, E, D): W_V^T per key/value head
        w_o = attn.o.weight.detach().float().cpu().T.reshape(H, E, D)  # (H, E, D): W_O per query head
        if block.attn_post is not None:
            w_o = w_o @ _norm_matrix(block.attn_post, D)
        kv = torch.arange(H) // (H // K)
        small = w_o @ g @ w_v[kv].transpose(1, 2)  # (H, E, E) = W_O^h N U^T E_l W_V^h
        lam = torch.linalg.eigvals(small.double())  # (H, E)
        mass = lam.abs().sum(-1).clamp_min(1e-300)
        out[layer] = ((1 + lam.real.sum(-1) / mass) / 2).float()
    return out


def score_heads(
    model: Transformer, n_seqs: int = 8, length: int | None = None, seed: int = 0
) -> tuple[HeadScores, RepeatedSequences]:
    """Every head's four scores, and the repeated sequences the pattern scores were measured on."""
    seqs = repeated_sequences(model, n_seqs, length, seed)
    patterns = pattern_scores(model, seqs)
    return HeadScores(copying=copying_scores(model), **patterns), seqs


TITLES = {
    "previous_token": "previous-token score",
    "duplicate_token": "duplicate-token score",
    "induction": "induction score",
    "copying": "copying score (positive OV eigenvalue mass)",
}


def write_heatmaps(scores: HeadScores, out: str | Path, model_name: str = "") -> list[Path]:
    """One (layer x head) heat map per score, ``OUT/<score>.svg``."""
    from clew.toys.svg import heatmap

    suffix = f" -- {model_name}" if model_name else ""
    return [
        heatmap(scores.get(name).tolist(), TITLES[name] + suffix).save(Path(out) / f"{name}.svg")
        for name in SCORES
    ]

"""Attention-head motifs: previous-token, duplicate-token and induction heads, and copying OV circuits.

The pattern scores are measured on *repeated random sequences*: the family's beginning-of-sequence
token when its tokenizer adds one, then R distinct random tokens, then the same R tokens again. The
R tokens are drawn in one of two ways (``source``):

* ``"model"`` (the default): sampled from the model itself, one token at a time from its own
  next-token distribution, with every token already drawn masked out (so that no token occurs twice
  and each score below has one right answer). The first repeat is then text of the kind the model
  was trained on. A small model trained on a narrow corpus (the organism) shows no induction at all
  on uniformly random tokens, which it has never seen, but a clear induction head on its own text.
* ``"uniform"``: uniformly random ordinary tokens (the classic test; fine for large models).

With
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


@dataclass
class TextSequences:
    """Windows of a text, for the pattern scores on text where tokens recur naturally (a story that
    names its characters again and again) rather than on an artificial repeat.

    A position i is scored for the duplicate-token and induction scores when its token occurred
    earlier, at j < i, and the token after the most recent such j is the token after i: a place where
    copying what followed the last occurrence is right. There the duplicate-token score is the
    attention from i to every earlier occurrence of its token, the induction score the attention to
    every position right after one (other than i itself). Among those places, only the ones where
    the next token never came earlier in the window except right after this token: where copying is
    the only way the window tells it (so "agreed that" in a story that uses it twice counts, but not a
    full stop followed by a word that also begins other sentences). On a repeat of distinct tokens
    these are the scores of :class:`RepeatedSequences` at every second-repeat position but the last."""

    tokens: Tensor
    """(B, P) token ids; each row starts with the BOS when the family has one."""
    offset: int
    """Position of the first text token: 1 after a BOS, else 0."""

    def masks(self) -> tuple[Tensor, Tensor, Tensor]:
        """(B, P) scored positions, and (B, P, P) duplicate and induction keys per query position."""
        t = self.tokens
        B, P = t.shape
        pos = torch.arange(P)
        text = pos >= self.offset
        same = (t[:, :, None] == t[:, None, :]) & (pos[None, :] < pos[:, None])[None] & text[None, None, :]
        nxt = torch.cat([t[:, 1:], torch.full((B, 1), -1, dtype=t.dtype)], dim=1)  # (B, P) token after
        last = torch.where(same, pos[None, None, :], -1).amax(-1)  # (B, P) the most recent occurrence
        follows = nxt.gather(1, last.clamp_min(0))
        # the next token never came earlier in the window except right after this token: copying is
        # the only way the window tells it
        elsewhere = (t[:, None, :] == nxt[:, :, None]) & (pos[None, :] <= pos[:, None])[None]  # (B, Pq, Pk)
        before = torch.cat([torch.full((B, 1), -2, dtype=t.dtype), t[:, :-1]], 1)  # token before each key
        elsewhere &= before[:, None, :] != t[:, :, None]
        query = (last >= 0) & (follows == nxt) & (nxt >= 0) & text[None, :] & ~elsewhere.any(-1)
        after = torch.zeros_like(same)
        after[:, :, 1:] = same[:, :, :-1]
        after &= pos[None, None, :] != pos[None, :, None]
        return query, same, after


def bos_token(model: Transformer) -> int | None:
    """The token the family's tokenizer puts first, or None (no tokenizer, or none is added)."""
    tok = model.tokenizer
    if tok is None or getattr(tok, "bos_token_id", None) is None:
        return None
    ids = list(tok("x")["input_ids"])
    return tok.bos_token_id if ids and ids[0] == tok.bos_token_id else None


SOURCES = ("model", "uniform")


def repeated_sequences(
    model: Transformer,
    n_seqs: int = 8,
    length: int | None = None,
    seed: int = 0,
    source: str = "model",
    temperature: float = 1.0,
) -> RepeatedSequences:
    """``n_seqs`` sequences of ``length`` distinct random ordinary tokens, each repeated twice; the
    tokens are sampled from the model (``source="model"``) or uniformly (``"uniform"``)."""
    if source not in SOURCES:
        raise ClewError(f"unknown sequence source {source!r}; known: {', '.join(SOURCES)}")
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
    if temperature <= 0:
        raise ClewError(f"the sampling temperature must be positive, got {temperature}")
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
    if source == "uniform":
        first = torch.stack(
            [candidates[torch.randperm(len(candidates), generator=g)[:length]] for _ in range(n_seqs)]
        )
    else:
        first = _sample_distinct(model, candidates, n_seqs, length, bos, temperature, g)
    return RepeatedSequences(_after_bos(torch.cat([first, first], dim=1), bos), offset, length)


@torch.no_grad()
def _sample_distinct(
    model: Transformer,
    candidates: Tensor,
    n_seqs: int,
    length: int,
    bos: int | None,
    temperature: float,
    g: torch.Generator,
) -> Tensor:
    """(n_seqs, length) tokens sampled from the model's next-token distributions restricted to
    ``candidates``, each token at most once per sequence. Without a BOS the first token is uniform."""
    device = model.embed.weight.device
    allowed = torch.zeros(n_seqs, model.cfg.vocab_size, dtype=torch.bool)
    allowed[:, candidates] = True
    if bos is None:
        start = candidates[torch.randint(len(candidates), (n_seqs,), generator=g)]
        seqs = start[:, None]
        allowed[torch.arange(n_seqs), start] = False
    else:
        seqs = torch.full((n_seqs, 1), bos, dtype=torch.long)
    while seqs.shape[1] < length + (bos is not None):
        logits = model(seqs.to(device))[:, -1].float().cpu() / temperature  # (B, V)
        logits = logits.masked_fill(~allowed, float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]  # (B,)
        allowed[torch.arange(n_seqs), nxt] = False
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
    return seqs[:, 1:] if bos is not None else seqs


Sequences = RepeatedSequences | TextSequences


def text_sequences(
    model: Transformer, text: str, n_seqs: int = 8, length: int | None = None
) -> TextSequences:
    """Up to ``n_seqs`` consecutive windows of ``length`` tokens of ``text`` (default: what fits the
    context, at most 256), each after the family's BOS."""
    tok = model.tokenizer
    if tok is None:
        raise ClewError("scoring heads on a text needs the model's tokenizer, and this model has none")
    bos = bos_token(model)
    offset = 0 if bos is None else 1
    length = min(256, model.cfg.n_ctx - offset) if length is None else length
    if not 2 <= length <= model.cfg.n_ctx - offset:
        raise ClewError(f"the window length must be from 2 to {model.cfg.n_ctx - offset}, got {length}")
    ids = list(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    n = min(n_seqs, len(ids) // length)
    if n < 1:
        raise ClewError(f"the text has {len(ids)} tokens, fewer than one window of {length}")
    body = torch.tensor(ids[: n * length]).view(n, length)
    return TextSequences(_after_bos(body, bos), offset)


def _after_bos(rows: Tensor, bos: int | None) -> Tensor:
    """(B, P) token rows with the family's BOS put first, when it has one."""
    if bos is None:
        return rows
    return torch.cat([torch.full((len(rows), 1), bos, dtype=rows.dtype), rows], dim=1)


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
def pattern_scores(model: Transformer, seqs: Sequences, batch: int = 4) -> dict[str, Tensor]:
    """The three attention-pattern scores, each (L, H), averaged over the sequences."""
    if isinstance(seqs, TextSequences):
        return _text_pattern_scores(model, seqs, batch)
    device = model.embed.weight.device
    total: dict[str, Tensor] = {}
    for chunk in seqs.tokens.split(batch):
        cache = model.run(chunk.to(device), record=True).cache
        assert cache is not None
        part = scores_from_patterns(cache.patterns, seqs)
        for name, s in part.items():
            total[name] = total.get(name, 0) + s.double() * len(chunk)
    return {name: (s / len(seqs.tokens)).float() for name, s in total.items()}


@torch.no_grad()
def _text_pattern_scores(model: Transformer, seqs: TextSequences, batch: int) -> dict[str, Tensor]:
    query, dup, ind = seqs.masks()
    n_query = int(query.sum())
    if n_query == 0:
        raise ClewError("no token of the text recurs with the same next token: nothing to score induction on")
    device = model.embed.weight.device
    P = seqs.tokens.shape[1]
    prev = torch.zeros(P, P, dtype=torch.bool)
    prev[torch.arange(seqs.offset + 1, P), torch.arange(seqs.offset, P - 1)] = True
    sums = {
        name: torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64) for name in SCORES[:3]
    }
    for start in range(0, len(seqs.tokens), batch):
        rows = slice(start, start + batch)
        cache = model.run(seqs.tokens[rows].to(device), record=True).cache
        assert cache is not None
        q = query[rows][:, None, :, None].float()  # (b, 1, P, 1)
        for layer, pattern in enumerate(cache.patterns):
            p = pattern.float().cpu()  # (b, H, P, P)
            sums["previous_token"][layer] += (p * prev).sum((0, 2, 3)).double()
            sums["duplicate_token"][layer] += (p * dup[rows][:, None] * q).sum((0, 2, 3)).double()
            sums["induction"][layer] += (p * ind[rows][:, None] * q).sum((0, 2, 3)).double()
    n_prev = len(seqs.tokens) * int(prev.sum())
    return {
        "previous_token": (sums["previous_token"] / n_prev).float(),
        "duplicate_token": (sums["duplicate_token"] / n_query).float(),
        "induction": (sums["induction"] / n_query).float(),
    }


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
    model: Transformer,
    n_seqs: int = 8,
    length: int | None = None,
    seed: int = 0,
    source: str = "model",
    text: str | None = None,
) -> tuple[HeadScores, Sequences]:
    """Every head's four scores, and the sequences the pattern scores were measured on: windows of
    ``text`` when it is given, else repeated random sequences drawn from ``source``."""
    if text is not None:
        seqs: Sequences = text_sequences(model, text, n_seqs, length)
    else:
        seqs = repeated_sequences(model, n_seqs, length, seed, source)
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
    from clew.render import heatmap

    suffix = f" -- {model_name}" if model_name else ""
    return [
        heatmap(scores.get(name).tolist(), TITLES[name] + suffix).save(Path(out) / f"{name}.svg")
        for name in SCORES
    ]

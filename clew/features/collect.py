"""Collecting a feature store: run a model and its dictionary's encoders over a corpus, keep per feature
its top contexts, a uniform sample of its non-zero activations, its statistics and histogram.

Memory is bounded whatever the corpus: per layer a few ``[F, K]`` and ``[F, K, W]`` tensors (the
running top-K and sample, each with its window of tokens and activations), ``[F, bins]`` histogram
counts and ``[F]`` sums; nothing grows with the number of tokens.

How the corpus becomes batches, and why the result does not depend on where a run was killed:

1. Documents are read in *blocks* of ``docs_per_block``. Each document becomes ``[BOS] + tokens``, cut
   into *contexts* of at most ``ctx_len`` tokens (a continuation starts again with BOS). Contexts never
   cross documents, so an example is the start of its own document: what the model saw is exactly
   what is shown, and recomputing it needs nothing else.
2. A block's contexts are numbered in corpus order, sorted by length (stable) and cut into batches of
   about ``batch_tokens`` tokens (padding is masked out).
3. After a block, and at most every ``checkpoint_seconds``, the whole state is written into the
   store's ``state`` table with the number of documents done. A resumed run skips those documents and
   continues with the same blocks, batches and state: it computes exactly what the uninterrupted run did.

Per context and feature, the *top* candidate is the context's largest activation (one example per
context); the *random* sample keeps the non-zero (token, feature) activations with the smallest
pseudo-random priorities, a hash of (context, position, feature, layer, seed): a uniform sample
without replacement, the same in every run. The BOS position is left out of everything (its
activations are an artefact of the attention sink) and shown with activation 0 in windows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.features.store import Example, FeatureRecord, FeatureStore, rounded_logits
from clew.models import Transformer
from clew.models.points import read_input

_M = 2**31 - 1  # the priority hash's modulus (a prime); also "no sample here"
SLACK = 0.8
"""A batch holds contexts of at least this fraction of its longest one's length (less padding)."""


class Corpus(Protocol):
    """Documents that can be read again from any document number."""

    name: str
    """What the corpus is, recorded in the store (a path or a built-in name)."""

    def documents(self, start: int) -> Iterator[str]:
        """The documents from number ``start`` on, in order."""
        ...


@dataclass
class CollectConfig:
    """How a feature store is collected. Fields that change the result are recorded in the store and
    must match when a collection is resumed."""

    ctx_len: int = 128
    """Longest context (tokens, BOS included); longer documents are cut into several contexts."""
    n_top: int = 10
    """Top-activating contexts kept per feature (one example per context)."""
    n_random: int = 12
    """Non-zero activations kept per feature as a uniform sample (the quantile and random examples)."""
    before: int = 16
    """Tokens shown before an example's peak (fewer at the start of a document)."""
    after: int = 3
    """Tokens shown after an example's peak."""
    n_logits: int = 10
    """Top and bottom logit effects kept per feature."""
    hist_bins: int = 96
    """Log-spaced histogram bins between ``hist_lo`` and ``hist_hi`` (values outside fall in the end bins)."""
    hist_lo: float = 1e-3
    """Lower edge of the histogram (activation units)."""
    hist_hi: float = 1e3
    """Upper edge of the histogram."""
    docs_per_block: int = 4096
    """Documents read, batched and checkpointed together. Larger blocks give batches of more even
    lengths (on the organism's corpus: 1.7% padding at 4,096 against 11% at 256, and batches three
    times fuller, 10-15% fewer CPU-seconds a token), at the cost of holding a block's token ids in memory
    and redoing at most one block after a kill."""
    max_docs: int | None = None
    """Stop after this many documents (``None``: the whole corpus)."""
    seed: int = 0
    """Seed of the random sample's priorities."""
    batch_tokens: int | None = None
    """Tokens per forward pass, padding included (default: 4,096 on a CPU, 32,768 on CUDA). It does not
    change the result beyond float rounding of batched products, but it is recorded."""
    checkpoint_seconds: float = 60.0
    """Write the state into the store at most this often (and at the end)."""
    threads: int | None = None
    """CPU threads (default: every core); ignored on CUDA. With more than one, that many batches run
    their forward passes at once, each on one thread: a small model's many small operations then never
    wait for each other's threads (two threads inside every operation were four times slower than one
    on a loaded two-core machine). The state is still updated batch by batch, in order."""
    device: str | None = None
    """``cpu`` or ``cuda`` (default: CUDA when present)."""
    progress: bool = True
    """Show a progress bar with tokens per second."""

    RESULT_FIELDS = (
        "ctx_len",
        "n_top",
        "n_random",
        "before",
        "after",
        "n_logits",
        "hist_bins",
        "hist_lo",
        "hist_hi",
        "docs_per_block",
        "max_docs",
        "seed",
        "batch_tokens",
    )

    def result_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RESULT_FIELDS}

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    def check(self) -> None:
        if self.ctx_len < 2:
            raise ClewError(f"ctx_len must be at least 2, got {self.ctx_len}")
        if min(self.n_top, self.n_random, self.n_logits, self.hist_bins, self.docs_per_block) < 1:
            raise ClewError("n_top, n_random, n_logits, hist_bins and docs_per_block must be positive")
        if not 0 < self.hist_lo < self.hist_hi:
            raise ClewError(f"histogram range must satisfy 0 < lo < hi, got {self.hist_lo}, {self.hist_hi}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ClewError(f"max_docs must be positive, got {self.max_docs}")


def fingerprint(tc: Transcoder) -> str:
    """A short hash that identifies a dictionary: its configuration, biases, thresholds and the first
    rows of every encoder (enough to tell two dictionaries apart without hashing gigabytes)."""
    h = hashlib.sha256(
        json.dumps({k: v for k, v in tc.cfg.to_dict().items() if k != "extra"}, sort_keys=True).encode()
    )
    for t in (tc.W_enc[:, :64], tc.b_enc, tc.threshold, tc.b_dec):
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----- the per-layer state -------------------------------------------------------------------------------


class LayerState:
    """Everything kept for one layer's features while collecting."""

    NAMES = (
        "n_active",
        "total",
        "act_max",
        "act_min",
        "hist",
        "top_val",
        "top_ctx",
        "top_pos",
        "top_tok",
        "top_act",
        "rnd_pri",
        "rnd_val",
        "rnd_ctx",
        "rnd_pos",
        "rnd_tok",
        "rnd_act",
    )

    def __init__(self, F: int, cfg: CollectConfig, device: torch.device):
        K, R, W, dev = cfg.n_top, cfg.n_random, cfg.width, device
        self.n_active = torch.zeros(F, dtype=torch.int64, device=dev)
        self.total = torch.zeros(F, dtype=torch.float64, device=dev)
        self.act_max = torch.zeros(F, device=dev)
        self.act_min = torch.full((F,), math.inf, device=dev)
        self.hist = torch.zeros(F, cfg.hist_bins, dtype=torch.int64, device=dev)
        self.top_val = torch.full((F, K), -math.inf, device=dev)
        self.top_ctx = torch.full((F, K), -1, dtype=torch.int64, device=dev)
        self.top_pos = torch.zeros(F, K, dtype=torch.int64, device=dev)
        self.top_tok = torch.full((F, K, W), -1, dtype=torch.int64, device=dev)
        self.top_act = torch.zeros(F, K, W, device=dev)
        self.rnd_pri = torch.full((F, R), _M, dtype=torch.int64, device=dev)
        self.rnd_val = torch.zeros(F, R, device=dev)
        self.rnd_ctx = torch.full((F, R), -1, dtype=torch.int64, device=dev)
        self.rnd_pos = torch.zeros(F, R, dtype=torch.int64, device=dev)
        self.rnd_tok = torch.full((F, R, W), -1, dtype=torch.int64, device=dev)
        self.rnd_act = torch.zeros(F, R, W, device=dev)

    def to_bytes(self) -> dict[str, bytes]:
        out = {}
        for name in self.NAMES:
            t = getattr(self, name).cpu().contiguous()
            head = json.dumps({"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}).encode()
            out[name] = len(head).to_bytes(4, "little") + head + t.numpy().tobytes()
        return out

    def load(self, blobs: dict[str, bytes]) -> None:
        for name in self.NAMES:
            raw = blobs[name]
            n = int.from_bytes(raw[:4], "little")
            head = json.loads(raw[4 : 4 + n])
            arr = np.frombuffer(raw, dtype=head["dtype"], offset=4 + n).reshape(head["shape"]).copy()
            cur = getattr(self, name)
            setattr(self, name, torch.from_numpy(arr).to(cur.device))


# ----- batches ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    tokens: Tensor
    """``[B, P]`` token ids (padding: 0)."""
    lengths: Tensor
    """``[B]`` real tokens per row."""
    contexts: Tensor
    """``[B]`` context numbers."""


def contexts_of(ids: list[int], bos: int | None, ctx_len: int) -> list[list[int]]:
    """A document's token ids (its BOS included) cut into contexts; each continuation starts with BOS."""
    if bos is None or len(ids) <= ctx_len:
        return [ids[i : i + ctx_len] for i in range(0, len(ids), ctx_len)]
    out, body = [ids[:ctx_len]], ids[ctx_len:]
    step = ctx_len - 1
    out += [[bos, *body[i : i + step]] for i in range(0, len(body), step)]
    return out


def batches(contexts: list[list[int]], first: int, batch_tokens: int) -> list[Batch]:
    """One block's contexts (numbered from ``first``) sorted by length and cut into padded batches."""
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    out, i = [], 0
    while i < len(order):
        P = len(contexts[order[i]])
        rows = max(1, batch_tokens // P)
        chunk = order[i : i + rows]
        # a batch ends where its contexts get much shorter than its longest: padding costs a full token
        short = [r for r, j in enumerate(chunk) if len(contexts[j]) < SLACK * P]
        if short:
            chunk = chunk[: short[0]]
            rows = len(chunk)
        toks = torch.zeros(len(chunk), P, dtype=torch.long)
        for r, j in enumerate(chunk):
            toks[r, : len(contexts[j])] = torch.tensor(contexts[j])
        out.append(
            Batch(
                toks,
                torch.tensor([len(contexts[j]) for j in chunk]),
                torch.tensor([first + j for j in chunk], dtype=torch.long),
            )
        )
        i += rows
    return out


class _Stop(Exception):
    pass


class _Reader:
    """An MLP replacement that keeps what the dictionary reads at ``layers`` and stops after the last."""

    def __init__(self, model: Transformer, tc: Transcoder, layers: list[int]):
        self.model, self.tc, self.layers = model, tc, layers
        self.write = tc.cfg.write
        self.inputs: dict[int, Tensor] = {}

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        if layer in self.layers:
            self.inputs[layer] = read_input(self.tc.cfg.read, resid_mid, mlp_in)
            if layer == self.layers[-1]:
                raise _Stop
        return self.model.mlp_branch(layer, mlp_in, self.write)


def _inputs(
    model: Transformer, tc: Transcoder, tokens: Tensor, layers: list[int] | None = None
) -> dict[int, Tensor]:
    """layer -> ``[B, P, d]``: what the dictionary reads at each of its ``layers`` (all when None), on
    ``tokens`` ``[B, P]``; the model runs no further than the last of them."""
    reader = _Reader(model, tc, list(tc.layers) if layers is None else layers)
    try:
        model.run(tokens, mlp=reader)
    except _Stop:
        pass
    return reader.inputs


@torch.inference_mode()
def feature_activations(
    model: Transformer, tc: Transcoder, tokens: Tensor, up_to: int | None = None
) -> dict[int, Tensor]:
    """layer -> ``[B, P, F]`` activations of every feature on ``tokens`` ``[B, P]`` (encoders only), at
    the dictionary's layers up to ``up_to`` (all when None): the model runs no further."""
    layers = [layer for layer in tc.layers if up_to is None or layer <= up_to]
    if not layers:
        return {}
    inputs = _inputs(model, tc, tokens, layers)
    return {layer: _encode(tc, layer, inputs[layer]).float() for layer in layers}


def _flat_nonzero(mask: Tensor) -> Tensor:
    """``mask.nonzero().flatten()`` for a contiguous 1-d bool tensor, read eight entries at a time: the
    sparse masks of a dictionary's activations are mostly empty words."""
    if mask.numel() % 8 or mask.device.type != "cpu":
        return mask.nonzero().flatten()
    words = mask.view(torch.uint8).view(torch.int64)
    w = words.nonzero().flatten()
    sub = words[w].view(torch.uint8).view(-1, 8).nonzero()  # (word, byte); bytes in memory order
    return w[sub[:, 0]] * 8 + sub[:, 1]


def _threshold(tc: Transcoder, layer: int) -> Tensor | None:
    """Layer's per-feature threshold when the nonlinearity is one (JumpReLU, BatchTopK at inference),
    else None."""
    if tc.cfg.activation in ("jumprelu", "batchtopk") and tc.threshold is not None:
        return tc.threshold[tc.slot(layer)]
    return None


def _encode_active(tc: Transcoder, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_encode` (float32) and where its result is positive, ``[B, P, F]`` each, with one
    comparison for the two when the nonlinearity is a threshold of no negative value (a NaN
    pre-activation then counts as inactive, as the store always counted it)."""
    thr = _threshold(tc, layer)
    if thr is not None and bool((thr >= 0).all()):
        pre = tc.pre_activations(layer, x).float()
        active = pre > thr.float()
        return pre.masked_fill_(~active, 0.0), active
    acts = _encode(tc, layer, x).float()
    return acts, acts > 0


def _encode(tc: Transcoder, layer: int, x: Tensor) -> Tensor:
    """``tc.encode(layer, x)``, with the threshold (JumpReLU, BatchTopK at inference) or ReLU applied in
    place on the pre-activations (no second ``[B, P, F]`` tensor); the same values."""
    pre = tc.pre_activations(layer, x)
    if tc.cfg.activation == "relu":
        return pre.relu_()
    thr = _threshold(tc, layer)
    if thr is not None:
        return pre.masked_fill_(pre <= thr, 0.0)
    return tc.activate(layer, pre)


# ----- one batch into the state ----------------------------------------------------------------------------


def _priorities(ctx: Tensor, pos: Tensor, feat: Tensor, layer: int, seed: int) -> Tensor:
    """Pseudo-random int64 priorities in ``[0, _M)`` of (context, position, feature) triples (1-d tensors)."""
    h = (ctx * 4099 + pos) % _M
    h = (h * 1103515245 + 12345 + seed * 2654435 + layer * 97) % _M
    h = (h * 48271 + feat * 69621 + 7) % _M
    h = (h * 16807 + 40692) % _M
    return (h * 39373 + 1) % _M


def _windows(
    acts: Tensor, tokens: Tensor, lengths: Tensor, b: Tensor, p: Tensor, f: Tensor, before: int, after: int
) -> tuple[Tensor, Tensor]:
    """For entries (row ``b``, position ``p``, feature ``f``), 1-d each: the window's tokens ``[m, W]``
    (-1 outside the context) and the feature's activations there."""
    offs = torch.arange(-before, after + 1, device=acts.device)
    pos = p[:, None] + offs  # [m, W]
    valid = (pos >= 0) & (pos < lengths[b][:, None])
    P, F = acts.shape[1], acts.shape[2]
    row = b[:, None] * P + pos.clamp(0, P - 1)  # [m, W] flat (row, position): one gather, not three
    tok = torch.where(valid, tokens.reshape(-1)[row], -1)
    act = torch.where(valid, acts.reshape(-1)[row * F + f[:, None]], 0.0)
    return tok, act


def _merge(
    s: LayerState,
    prefix: str,
    rows: Tensor,
    fields: dict[str, Tensor],
    valid: Tensor,
    b: Tensor,
    p: Tensor,
    acts: Tensor,
    tokens: Tensor,
    lengths: Tensor,
    cfg: CollectConfig,
) -> None:
    """For the features ``rows`` (the others have no candidate that could enter), keep the best K of
    the state's K entries followed by this batch's k candidates: the largest ``val`` for the top
    examples, the smallest ``pri`` for the random ones. ``fields``: name -> batch values ``[F, k]``;
    the windows are gathered only for the candidates that made it in (``valid`` ``[F, k]``: a real
    candidate at row ``b``, position ``p``; the others have empty windows)."""
    key = "val" if prefix == "top" else "pri"
    K = getattr(s, f"{prefix}_{key}").shape[1]
    state_key = getattr(s, f"{prefix}_{key}")[rows]
    best = torch.cat([state_key, fields[key][rows]], 1).topk(K, dim=1, largest=prefix == "top").indices
    for name, new in fields.items():
        full = getattr(s, f"{prefix}_{name}")
        full[rows] = torch.cat([full[rows], new[rows]], 1).gather(1, best)
    old = best.clamp(max=K - 1)[:, :, None].expand(-1, -1, cfg.width)
    tok = getattr(s, f"{prefix}_tok")[rows].gather(1, old)
    act = getattr(s, f"{prefix}_act")[rows].gather(1, old)
    fi, ji = (best >= K).nonzero(as_tuple=True)
    if fi.numel():
        j = best[fi, ji] - K
        feat = rows[fi]
        real = valid[feat, j]
        tok[fi, ji], act[fi, ji] = -1, 0.0
        fi, ji, j, feat = fi[real], ji[real], j[real], feat[real]
        if fi.numel():
            tok[fi, ji], act[fi, ji] = _windows(
                acts, tokens, lengths, b[feat, j], p[feat, j], feat, cfg.before, cfg.after
            )
    getattr(s, f"{prefix}_tok")[rows] = tok
    getattr(s, f"{prefix}_act")[rows] = act


@dataclass
class Found:
    """What one batch holds for one layer's features, computed from the batch alone (so the workers
    can find it while the state is busy with the batch before): statistics to add, and the candidates
    for the top and random examples, ``[F, k]`` and ``[F, R]``, to merge with the state in order."""

    counts: Tensor
    """``[F]`` non-zero activations."""
    total: Tensor
    """``[F]`` their sum (float64)."""
    act_max: Tensor
    act_min: Tensor
    hist: Tensor
    """``[F, bins]`` histogram counts."""
    top_val: Tensor
    """``[F, k]`` each feature's k best context peaks in the batch (0 where fewer fire)."""
    top_row: Tensor
    top_pos: Tensor
    rnd_pri: Tensor
    """``[F, R]`` the smallest sampling priorities among the feature's non-zero entries (``_M``: none)."""
    rnd_row: Tensor
    rnd_pos: Tensor
    rnd_val: Tensor


@torch.inference_mode()
def find(
    acts: Tensor,
    batch: Batch,
    layer: int,
    cfg: CollectConfig,
    edges: Tensor,
    limit: Tensor,
    active: Tensor | None = None,
) -> Found:
    """One batch's :class:`Found` for one layer from its activations ``[B, P, F]`` (zeroed in place at
    BOS and padding) and, if known, where they are positive (``active``, bool, also cleared in place).
    ``limit`` ``[F]``: a priority no sampled entry can beat once merged (the state's largest kept
    priority, or any earlier value of it: it only falls), which spares sorting the rest. The work is
    on the non-zero entries, except one max over positions."""
    B, P, F = acts.shape
    dev = acts.device
    lengths, ctx = batch.lengths.to(dev), batch.contexts.to(dev)
    active = acts > 0 if active is None else active
    acts[:, 0], active[:, 0] = 0.0, False  # BOS left out
    for b in (lengths < P).nonzero().flatten().tolist():
        acts[b, int(lengths[b]) :], active[b, int(lengths[b]) :] = 0.0, False
    flat = acts.view(-1)
    where = _flat_nonzero(active.view(-1))  # indices into [B, P, F]
    values = flat[where]
    f = where % F
    bp = where // F  # row * P + position
    bins = torch.bucketize(values, edges).clamp(0, cfg.hist_bins - 1)
    # top contexts: each context's peak per feature and its first position, from the non-zero entries
    # (as acts.max(dim=1) would give them, without a pass over every position of every feature)
    key = (bp // P) * F + f  # (row, feature)
    peak = torch.zeros(B * F, device=dev).scatter_reduce_(0, key, values, "amax")
    at_peak = values == peak[key]
    arg = torch.zeros(B * F, dtype=torch.int64, device=dev).fill_(P)
    arg.scatter_reduce_(0, key[at_peak], bp[at_peak] % P, "amin")
    peak, arg = peak.view(B, F), arg.view(B, F).masked_fill_(peak.view(B, F) <= 0, 0)
    k = min(cfg.n_top, B)
    cv, cb = peak.topk(k, dim=0)  # [k, F]
    # the random sample: per feature, the non-zero entries with the smallest priorities
    R = cfg.n_random
    pri = _priorities(ctx[bp // P], bp % P, f, layer, cfg.seed)
    open_ = pri < limit[f]
    pri, fo, bpo, vo = pri[open_], f[open_], bp[open_], values[open_]
    order = torch.argsort(fo * _M + pri)  # by feature, then priority
    fs = fo[order]
    first = torch.searchsorted(fs, torch.arange(F, device=dev))
    rank = torch.arange(len(fs), device=dev) - first[fs]
    keep = order[rank < R]
    slot = fs[rank < R] * R + rank[rank < R]
    rp = torch.full((F * R,), _M, dtype=torch.int64, device=dev).index_put_((slot,), pri[keep]).view(F, R)
    ri = torch.zeros(F * R, dtype=torch.int64, device=dev).index_put_((slot,), bpo[keep]).view(F, R)
    return Found(
        counts=torch.bincount(f, minlength=F),
        total=torch.zeros(F, dtype=torch.float64, device=dev).index_add_(0, f, values.double()),
        act_max=torch.zeros(F, device=dev).scatter_reduce_(0, f, values, "amax"),
        act_min=torch.full((F,), math.inf, device=dev).scatter_reduce_(0, f, values, "amin"),
        hist=torch.bincount(f * cfg.hist_bins + bins, minlength=F * cfg.hist_bins).view(F, cfg.hist_bins),
        top_val=cv.T,
        top_row=cb.T,
        top_pos=arg.gather(0, cb).T,
        rnd_pri=rp,
        rnd_row=ri // P,
        rnd_pos=ri % P,
        rnd_val=torch.zeros(F * R, device=dev).index_put_((slot,), vo[keep]).view(F, R),
    )


@torch.inference_mode()
def fold(state: LayerState, found: Found, acts: Tensor, batch: Batch, cfg: CollectConfig) -> None:
    """Merge one batch's :class:`Found` into ``state``, in corpus order; windows are gathered from
    ``acts`` only for the candidates that make it in."""
    dev = acts.device
    tokens, lengths, ctx = batch.tokens.to(dev), batch.lengths.to(dev), batch.contexts.to(dev)
    state.n_active += found.counts
    state.total += found.total
    state.act_max = torch.maximum(state.act_max, found.act_max)
    state.act_min = torch.minimum(state.act_min, found.act_min)
    state.hist += found.hist
    cv, cb, cp = found.top_val, found.top_row, found.top_pos
    enter = (cv > 0) & (cv > state.top_val[:, -1:])
    rows = enter.any(1).nonzero().flatten()
    if rows.numel():
        cv = torch.where(enter, cv, -math.inf)
        fields = {"val": cv, "ctx": torch.where(enter, ctx[cb], -1), "pos": cp}
        _merge(state, "top", rows, fields, enter, cb, cp, acts, tokens, lengths, cfg)
    rp, rb, rpos = found.rnd_pri, found.rnd_row, found.rnd_pos
    sampled = rp < _M
    rows = (rp < state.rnd_pri.amax(1, keepdim=True)).any(1).nonzero().flatten()  # where one can enter
    if rows.numel():
        fields = {"pri": rp, "val": found.rnd_val, "ctx": torch.where(sampled, ctx[rb], -1), "pos": rpos}
        _merge(state, "rnd", rows, fields, sampled, rb, rpos, acts, tokens, lengths, cfg)


# ----- logit effects ---------------------------------------------------------------------------------------


@torch.inference_mode()
def logit_effects(
    model: Transformer, tc: Transcoder, layer: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The direct effect on the logits of one unit of each feature of ``layer``: its decoder vectors
    summed over every layer it writes to (for a CLT: all layers from its own to the last; the sum is
    what reaches the final residual stream), each through that layer's post-MLP norm weight when the
    dictionary writes before one, then the final norm's weight (its scale left out) and the
    unembedding, centred over the vocabulary. Returns top values, top tokens, bottom values, bottom
    tokens, each ``[F, k]``."""
    dev = model.unembed.weight.device
    total = None
    for dst in tc.dst_layers(layer):
        w = tc.decoder_weights(layer, dst).to(dev).float()  # [F, d]
        post = model.blocks[dst].mlp_post
        if post is not None and tc.cfg.write == "mlp_out":
            w = w * (post.weight.float() + post.offset)
        total = w if total is None else total + w
    assert total is not None
    total = total * (model.ln_final.weight.float() + model.ln_final.offset)
    U = model.unembed.weight.float()  # [V, d]
    out: list[list[Tensor]] = [[], [], [], []]
    for i in range(0, total.shape[0], 256):
        logits = total[i : i + 256] @ U.T
        logits = logits - logits.mean(-1, keepdim=True)
        tv, ti = logits.topk(k, dim=-1)
        bv, bi = logits.topk(k, dim=-1, largest=False)
        for j, t in enumerate((tv, ti, bv, bi)):
            out[j].append(t.cpu())
    tv, ti, bv, bi = (torch.cat(parts) for parts in out)
    return tv, ti, bv, bi


# ----- the whole collection ----------------------------------------------------------------------------------


@dataclass
class CollectResult:
    path: Path
    n_docs: int
    n_contexts: int
    n_tokens: int
    seconds: float
    resumed: bool
    cpu_seconds: float = 0.0
    """Processor time of the collection loop, all threads together (a rate per CPU-second is steadier
    than wall time on a shared machine)."""

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.n_tokens / self.cpu_seconds if self.cpu_seconds else 0.0


def collect(
    model: Transformer,
    tc: Transcoder,
    corpus: Corpus,
    out: str | Path,
    cfg: CollectConfig | None = None,
    *,
    model_name: str | None = None,
    dictionary_name: str | None = None,
    on_block: Callable[[int], None] | None = None,
) -> CollectResult:
    """Collect the feature store of ``tc`` on ``model`` over ``corpus`` into ``out`` (an SQLite file).

    The store is built in ``out.partial`` and renamed to ``out`` when complete; if ``out.partial``
    exists (a killed run), collection resumes from its last checkpoint. ``on_block(docs_done)`` is
    called after every block (tests use it to stop a run).
    """
    from clew.features.labels import auto_labels

    cfg = cfg or CollectConfig()
    cfg.check()
    out = Path(out)
    if out.exists() and not out.is_file():
        raise ClewError(f"{out}: not a file")
    tc.check_compatible(model.cfg)
    from clew.models.loading import pick_device

    device = pick_device(cfg.device)  # CUDA when present; an unknown or absent device is a one-line error
    threads = cfg.threads or os.cpu_count() or 1
    workers = threads if device.type == "cpu" else 1
    if device.type == "cpu":
        torch.set_num_threads(1 if workers > 1 else threads)
    if cfg.batch_tokens is None:
        cfg.batch_tokens = 32768 if device.type == "cuda" else 4096
    model.to(device)
    tc.to(device)
    tok = model.tokenizer
    if tok is None:
        raise ClewError(f"{model.name}: the model has no tokenizer; collecting needs one to read text")
    bos = getattr(tok, "bos_token_id", None)
    F = tc.cfg.n_features
    settings = cfg.result_settings()
    meta = {
        "model": model_name or model.name,
        "dictionary": dictionary_name or tc.source,
        "dictionary_fingerprint": fingerprint(tc),
        "dictionary_kind": tc.cfg.kind,
        "layers": tc.layers,
        "n_features": F,
        "corpus": corpus.name,
        "settings": settings,
        "hist_edges": [float(x) for x in np.geomspace(cfg.hist_lo, cfg.hist_hi, cfg.hist_bins - 1)],
        "complete": False,
    }
    partial = out.with_name(out.name + ".partial")
    resumed = partial.exists()
    if resumed:
        store = FeatureStore(partial, _open_partial(partial))
        for key in ("dictionary_fingerprint", "settings", "corpus", "layers", "n_features"):
            if store.meta.get(key) != meta[key]:
                store.close()
                raise ClewError(
                    f"{partial}: an unfinished collection with another {key.replace('_', ' ')}; delete it "
                    "or collect with the same settings"
                )
    else:
        store = FeatureStore.create(partial, meta)
    edges = torch.tensor(meta["hist_edges"], device=device, dtype=torch.float32)
    states = {layer: LayerState(F, cfg, device) for layer in tc.layers}
    progress = {"docs": 0, "contexts": 0, "tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0, "vocab": []}
    if resumed and store.get_state("progress") is not None:
        progress = json.loads(store.get_state("progress") or b"{}")
        for layer, st in states.items():
            st.load({n: store.get_state(f"{layer}.{n}") or b"" for n in LayerState.NAMES})
    seen_tokens: set[int] = set(progress["vocab"])

    def checkpoint() -> None:
        blobs = {f"{layer}.{n}": b for layer, st in states.items() for n, b in st.to_bytes().items()}
        progress["vocab"] = sorted(seen_tokens)
        blobs["progress"] = json.dumps(progress).encode()
        store.put_state(blobs)

    bar = _bar(cfg, progress["tokens"])
    start, last_save = time.perf_counter(), time.perf_counter()
    base_seconds, base_cpu = progress["seconds"], progress.get("cpu_seconds", 0.0)
    cpu_start = time.process_time()
    docs = corpus.documents(progress["docs"])
    boundary = True  # the state holds whole blocks only: a checkpoint here resumes exactly
    try:
        while cfg.max_docs is None or progress["docs"] < cfg.max_docs:
            want = cfg.docs_per_block
            if cfg.max_docs is not None:
                want = min(want, cfg.max_docs - progress["docs"])
            block = [d for _, d in zip(range(want), docs)]
            if not block:
                break
            boundary = False
            ids = _tokenise(tok, block)
            block_tokens = 0
            ctxs = [
                c
                for doc in ids
                for c in contexts_of([bos, *doc] if bos is not None else doc, bos, cfg.ctx_len)
            ]
            todo = batches(ctxs, progress["contexts"], cfg.batch_tokens)
            for batch, acts, found in _found(model, tc, todo, states, cfg, edges, device, workers):
                seen_tokens.update(batch.tokens.unique().tolist())
                for layer, a in acts.items():
                    fold(states[layer], found[layer], a, batch, cfg)
                n = int((batch.lengths - 1).clamp(min=0).sum())
                block_tokens += n
                if bar is not None:
                    bar.update(n)
            progress["tokens"] += block_tokens
            progress["docs"] += len(block)
            progress["contexts"] += len(ctxs)
            progress["seconds"] = base_seconds + time.perf_counter() - start
            progress["cpu_seconds"] = base_cpu + time.process_time() - cpu_start
            boundary = True
            if time.perf_counter() - last_save >= cfg.checkpoint_seconds:
                checkpoint()
                last_save = time.perf_counter()
            if on_block is not None:
                on_block(progress["docs"])
        if progress["tokens"] == 0:
            raise ClewError(f"{corpus.name}: the corpus has no text (no tokens to collect from)")
        if bar is not None:
            bar.close()
        if device.type == "cpu":
            torch.set_num_threads(threads)  # the logit effects are a few large products
        records = _records(model, tc, states, progress["tokens"], cfg)
        texts = _texts(tok, seen_tokens | {t for r in records for t, _ in r.top_logits + r.bottom_logits})
        store.put_vocab(texts)
        store.put_features(records, cfg.width)
        store.put_labels(auto_labels(records, texts), "auto")
        store.clear_state()
        store.set_meta(
            complete=True,
            n_docs=progress["docs"],
            n_contexts=progress["contexts"],
            n_tokens=progress["tokens"],
            created=int(time.time()),
        )
    except BaseException:
        if bar is not None:
            bar.close()
        if boundary and not store.meta.get("complete") and progress["tokens"]:  # else: the last checkpoint
            try:
                checkpoint()
            except Exception:
                pass
        store.close()
        raise
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    os.replace(partial, out)
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    return CollectResult(
        out,
        progress["docs"],
        progress["contexts"],
        progress["tokens"],
        progress["seconds"],
        resumed,
        progress.get("cpu_seconds", 0.0),
    )


def _found(
    model: Transformer,
    tc: Transcoder,
    todo: list[Batch],
    states: dict[int, LayerState],
    cfg: CollectConfig,
    edges: Tensor,
    device: torch.device,
    workers: int,
) -> Iterator[tuple[Batch, dict[int, Tensor], dict[int, Found]]]:
    """Each batch with its activations (:func:`feature_activations`) and what it holds (:func:`find`),
    in order. With ``workers`` > 1 that many batches are worked on at once in threads (torch releases
    the interpreter lock in its kernels), at most one more waiting, so memory holds a few batches
    whatever the block; only :func:`fold` is left to the caller, in order."""

    @torch.inference_mode()
    def job(batch: Batch, limits: dict[int, Tensor]) -> tuple[dict[int, Tensor], dict[int, Found]]:
        inputs = _inputs(model, tc, batch.tokens.to(device))
        acts, found = {}, {}
        for layer in tc.layers:  # each layer's activations searched while they are still in the cache
            acts[layer], active = _encode_active(tc, layer, inputs.pop(layer))
            found[layer] = find(acts[layer], batch, layer, cfg, edges, limits[layer], active)
        return acts, found

    def limits() -> dict[int, Tensor]:  # read when a job is sent: any earlier value is safe (it only falls)
        return {layer: st.rnd_pri.amax(1) for layer, st in states.items()}

    if workers <= 1:
        for batch in todo:
            yield batch, *job(batch, limits())
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="clew-collect") as pool:
        pending: deque = deque()
        for batch in todo:
            pending.append((batch, pool.submit(job, batch, limits())))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()


def _open_partial(path: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _bar(cfg: CollectConfig, initial: int) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(desc="collecting", unit="tok", unit_scale=True, initial=initial, dynamic_ncols=True)


def _tokenise(tok: Any, texts: list[str]) -> list[list[int]]:
    if hasattr(tok, "batch_decode"):
        return [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return [list(tok.encode(t)) for t in texts]


def _texts(tok: Any, ids: set[int]) -> dict[int, str]:
    return {int(i): tok.decode([int(i)]) for i in sorted(ids) if i >= 0}


def _records(
    model: Transformer, tc: Transcoder, states: dict[int, LayerState], n_tokens: int, cfg: CollectConfig
) -> list[FeatureRecord]:
    records = []
    for layer, s in states.items():
        tv, ti, bv, bi = (t.numpy() for t in logit_effects(model, tc, layer, cfg.n_logits))
        a = {n: getattr(s, n).cpu().numpy() for n in LayerState.NAMES}
        for f in range(tc.cfg.n_features):
            n = int(a["n_active"][f])
            examples = []
            for kind, prefix, value in (("top", "top", "top_val"), ("random", "rnd", "rnd_val")):
                ctx, vals = a[f"{prefix}_ctx"][f], a[value][f]
                order = np.argsort(-vals, kind="stable") if kind == "random" else range(len(ctx))
                for j in order:
                    if ctx[j] < 0:
                        continue
                    toks = a[f"{prefix}_tok"][f, j]
                    keep = toks >= 0
                    pos = int(a[f"{prefix}_pos"][f, j])
                    examples.append(
                        Example(
                            kind=kind,
                            context=int(ctx[j]),
                            position=pos,
                            activation=float(vals[j]),
                            peak=min(pos, cfg.before),
                            tokens=toks[keep].tolist(),
                            acts=a[f"{prefix}_act"][f, j][keep].tolist(),
                        )
                    )
            records.append(
                FeatureRecord(
                    layer=layer,
                    feature=f,
                    n_active=n,
                    frequency=n / n_tokens if n_tokens else 0.0,
                    mean=float(a["total"][f]) / n if n else 0.0,
                    act_min=float(a["act_min"][f]) if n else 0.0,
                    act_max=float(a["act_max"][f]),
                    histogram=a["hist"][f].tolist(),
                    top_logits=rounded_logits(zip(ti[f].tolist(), tv[f].tolist())),
                    bottom_logits=rounded_logits(zip(bi[f].tolist(), bv[f].tolist())),
                    examples=examples,
                )
            )
    return records


def settings_dict(cfg: CollectConfig) -> dict[str, Any]:
    return asdict(cfg)

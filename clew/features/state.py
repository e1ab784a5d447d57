"""The running state of a collection, per layer: what is kept of each feature, and one batch folded in.

Memory is bounded whatever the corpus: per layer a few ``[F, K]`` and ``[F, K, W]`` tensors (the
running top-K and sample, each with its window of tokens and activations), ``[F, bins]`` histogram
counts and ``[F]`` sums; nothing grows with the number of tokens.

Per context and feature, the *top* candidate is the context's largest activation (one example per
context); the *random* sample keeps the non-zero (token, feature) activations with the smallest
pseudo-random priorities, a hash of (context, position, feature, layer, seed): a uniform sample
without replacement, the same in every run. The BOS position is left out of everything (its
activations are an artefact of the attention sink) and shown with activation 0 in windows.

A batch goes in in two steps: :func:`find` computes what it holds from the batch alone (worker threads
can run it beside other batches' forward passes), :func:`fold` merges that into the state, batch by
batch in corpus order, so the state does not depend on how many threads found it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from clew.features.config import CollectConfig
from clew.features.contexts import Batch

_M = 2**31 - 1  # the priority hash's modulus (a prime); also "no sample here"


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


def _flat_nonzero(mask: Tensor) -> Tensor:
    """``mask.nonzero().flatten()`` for a contiguous 1-d bool tensor, read eight entries at a time: the
    sparse masks of a dictionary's activations are mostly empty words."""
    if mask.numel() % 8 or mask.device.type != "cpu":
        return mask.nonzero().flatten()
    words = mask.view(torch.uint8).view(torch.int64)
    w = words.nonzero().flatten()
    sub = words[w].view(torch.uint8).view(-1, 8).nonzero()  # (word, byte); bytes in memory order
    return w[sub[:, 0]] * 8 + sub[:, 1]


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

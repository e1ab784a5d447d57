"""The significance tests that compare two sets of graphs, written out (no SciPy needed).

- Fisher's exact test on a 2x2 table (a feature kept in ``a`` of ``n`` graphs here, ``b`` of ``m`` there):
  two-sided, summing the hypergeometric probabilities no larger than the observed table's.
- McNemar's exact test for paired graphs (kept in A only against kept in B only).
- A permutation test of the difference of mean influence (zero where a feature is absent): the same
  random relabellings (or, for pairs, sign flips) for every feature, one matrix product for all of
  them; p = (1 + relabellings at least as extreme) / (1 + relabellings), never below 1 / (1 + n_perm).
  Rank tests with a normal approximation are wrong here: most values are tied at zero, and the tie
  correction then shrinks the variance until p-values of 1e-16 come out of three graphs.
- Benjamini-Hochberg q-values over the many features tested at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _log_hyper(k: int, n: int, m: int, total_kept: int) -> float:
    """log P(X = k) for X kept among the first n of n + m graphs, total_kept kept overall."""

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return log_comb(n, k) + log_comb(m, total_kept - k) - log_comb(n + m, total_kept)


def fisher_exact(a: int, n: int, b: int, m: int) -> float:
    """Two-sided p-value of ``a`` of ``n`` against ``b`` of ``m``."""
    kept = a + b
    lo, hi = max(0, kept - m), min(n, kept)
    observed = _log_hyper(a, n, m, kept)
    p = sum(math.exp(lp) for k in range(lo, hi + 1) if (lp := _log_hyper(k, n, m, kept)) <= observed + 1e-9)
    return min(1.0, p)


def bh_qvalues(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values, in the input's order."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    q = [1.0] * len(p)
    running = 1.0
    for rank in range(len(order), 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * len(p) / rank)
        q[i] = running
    return q


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact p-value of McNemar's test: pairs kept in A only against pairs kept in B only."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def permutation_pvalues(
    a: Tensor, b: Tensor, paired: bool = False, n_perm: int = 9999, seed: int = 0
) -> Tensor:
    """Two-sided p-values (F,) of the difference of means, row by row, of ``a`` (F, n) against ``b``
    (F, m): the columns relabelled at random (paired, n == m: each pair's sign flipped at random)."""
    g = torch.Generator().manual_seed(seed)
    a, b = a.double(), b.double()
    if paired:
        d = a - b  # (F, n)
        signs = torch.randint(0, 2, (d.shape[1], n_perm), generator=g, dtype=torch.float64) * 2 - 1
        observed = d.mean(1)
        null = d @ signs / d.shape[1]  # (F, n_perm)
    else:
        n, m = a.shape[1], b.shape[1]
        z = torch.cat([a, b], 1)  # (F, n + m)
        ranks = torch.rand(n + m, n_perm, generator=g).argsort(0)  # a random permutation per column
        one = torch.ones((), dtype=torch.float64)
        w = torch.where(ranks < n, one / n, -one / m)  # (n + m, n_perm), in float64 throughout
        observed = a.mean(1) - b.mean(1)
        null = z @ w
    extreme = (null.abs() >= observed.abs()[:, None] * (1 - 1e-7) - 1e-15).sum(1)  # ties count as extreme
    return (1 + extreme.double()) / (1 + n_perm)

"""The significance tests that compare two sets of graphs, written out (no SciPy needed).

- Fisher's exact test on a 2x2 table (a feature kept in ``a`` of ``n`` graphs here, ``b`` of ``m`` there):
  two-sided, summing the hypergeometric probabilities no larger than the observed table's.
- The Mann-Whitney U test on two samples (a feature's influence in each graph, zero where it is
  absent): the normal approximation with the tie correction, two-sided.
- Benjamini-Hochberg q-values over the many features tested at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value that ``x`` and ``y`` come from one distribution (normal approximation)."""
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return 1.0
    values = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1][0] == values[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r_x = sum(r for r, (_, side) in zip(ranks, values) if side == 0)
    u = r_x - n * (n + 1) / 2
    N = n + m
    var = n * m / 12 * ((N + 1) - ties / (N * (N - 1))) if N > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (abs(u - n * m / 2) - 0.5) / math.sqrt(var)  # continuity correction
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


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

"""The superposition figures as SVG files, and the text summary ``clew toys superposition`` prints.

* ``phase_diagram.svg``: n=2, m=1 -- which features the trained model represents, over feature
  density (1 - S) and the importance of feature 2 relative to feature 1, both on log scales.
* ``dimensionality.svg``: n=20, m=5 with equal importances -- dimensions per feature ``m / ||W||_F^2``
  against ``1 / (1 - S)``, with each feature's own dimensionality as dots; plateaus at 1/2 (antipodal
  pairs) and 2/5 (pentagons) are marked.
* ``geometry_m2.svg``: five features of decaying importance in two dimensions, one panel per sparsity:
  each feature's column of ``W`` drawn as an arrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clew.render import Axes, Canvas, fmt
from clew.toys.superposition import (
    PHASES,
    PhaseDiagram,
    ToyModels,
    dimensionality_sweep,
    geometry_panels,
    phase_diagram,
)

PHASE_COLORS = ("#4575b4", "#d73027", "#fdae61", "#dddddd")
FEATURE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def _edges(centres: torch.Tensor) -> list[float]:
    """Cell edges around log-spaced centres: geometric midpoints, extrapolated at the ends."""
    c = centres.double().log10().tolist()
    mids = [(a + b) / 2 for a, b in zip(c, c[1:])]
    first, last = c[0] - (mids[0] - c[0]), c[-1] + (c[-1] - mids[-1])
    return [10**v for v in [first, *mids, last]]


def phase_diagram_svg(pd: PhaseDiagram) -> Canvas:
    c = Canvas(560, 430)
    xe, ye = _edges(pd.relative_importance), _edges(pd.densities)
    ax = Axes(c, (70, 40, 320, 320), (xe[0], xe[-1]), (ye[0], ye[-1]), xlog=True, ylog=True)
    n_cols = len(pd.relative_importance)
    for i in range(len(pd.densities)):
        for j in range(n_cols):
            k = int(pd.phase[i, j])
            w = pd.models.W[i * n_cols + j, 0].tolist()
            x0, x1, y0, y1 = ax.px(xe[j]), ax.px(xe[j + 1]), ax.py(ye[i + 1]), ax.py(ye[i])
            tip = (
                f"density {float(pd.densities[i]):.3g}, importance of feature 2 "
                f"{float(pd.relative_importance[j]):.3g}: W = [{w[0]:.2f}, {w[1]:.2f}] ({PHASES[k]})"
            )
            c.rect(x0, y0, x1 - x0 + 0.4, y1 - y0 + 0.4, PHASE_COLORS[k], tip)
    ax.frame(
        "importance of feature 2 / importance of feature 1",
        "feature density 1 - S",
        "n = 2 features in m = 1 dimension",
    )
    for k, name in enumerate(PHASES):
        if k == 3 and not (pd.phase == 3).any():
            continue
        c.rect(405, 60 + 24 * k, 14, 14, PHASE_COLORS[k])
        c.text(425, 72 + 24 * k, name, 11, anchor="start")
    c.text(405, 170, "represented: ||W_i|| > 1/2", 10, anchor="start", color="#555")
    c.text(405, 184, "superposition: W_1 W_2 < 0", 10, anchor="start", color="#555")
    return c


def dimensionality_svg(models: ToyModels) -> Canvas:
    c = Canvas(560, 440)
    inv = (1 / (1 - models.sparsity)).tolist()
    ax = Axes(c, (70, 40, 400, 320), (1, max(inv) * 1.05), (0, 1.05), xlog=True)
    for value, label in ((1, "1"), (1 / 2, "1/2"), (2 / 5, "2/5"), (1 / 3, "1/3")):
        y = ax.py(value)
        c.line(ax.px(1), y, ax.px(max(inv) * 1.05), y, "#bbbbbb", 1, dash="4 3")
        c.text(ax.px(max(inv) * 1.05) + 6, y + 3.5, label, 10, anchor="start", color="#777")
    per_feature, shown = models.feature_dimensionality(), models.norms() > 0.5
    for x, row, keep in zip(inv, per_feature.tolist(), shown.tolist()):
        for d, represented in zip(row, keep):
            if represented:  # features the model ignores are left out
                c.circle(ax.px(x), ax.py(min(d, 1.04)), 2.2, "#7570b3", f"D_i = {d:.3f}", opacity=0.35)
    dims = models.dimensions_per_feature().tolist()
    c.polyline([(ax.px(x), ax.py(min(y, 1.04))) for x, y in zip(inv, dims)], "#d95f02", 2)
    for x, y in zip(inv, dims):
        c.circle(ax.px(x), ax.py(min(y, 1.04)), 3, "#d95f02", f"1/(1-S) = {x:.3g}: m/||W||_F^2 = {y:.3f}")
    n, m = models.W.shape[2], models.W.shape[1]
    ax.frame("1 / (1 - S)", "dimensions per feature", f"n = {n} features in m = {m} dimensions")
    c.text(
        70,
        425,
        "line: m / ||W||_F^2; dots: each represented feature's dimensionality",
        10,
        anchor="start",
        color="#555",
    )
    return c


def geometry_svg(models: ToyModels) -> Canvas:
    k = len(models.sparsity)
    size = 150
    c = Canvas(k * size + 20, size + 90)
    c.text((k * size + 20) / 2, 20, "five features in two dimensions (importance 0.9^i)", 12, weight="bold")
    for p in range(k):
        cx, cy, r = 10 + p * size + size / 2, 40 + size / 2, size * 0.36
        c.circle(cx, cy, r, "none", stroke="#dddddd")
        c.line(cx - r, cy, cx + r, cy, "#eeeeee")
        c.line(cx, cy - r, cx, cy + r, "#eeeeee")
        W = models.W[p]  # (2, n)
        scale = r / max(1.0, float(W.norm(dim=0).max()))
        for i in range(W.shape[1]):
            x, y = W[:, i].tolist()
            color = FEATURE_COLORS[i % len(FEATURE_COLORS)]
            c.line(cx, cy, cx + x * scale, cy - y * scale, color, 2.5)
            c.circle(
                cx + x * scale, cy - y * scale, 3.5, color, f"feature {i}: ||W_i|| = {math.hypot(x, y):.2f}"
            )
        S = float(models.sparsity[p])
        shown = int((models.norms()[p] > 0.5).sum())
        c.text(cx, 40 + size + 6, f"S = {fmt(S)}", 11)
        c.text(cx, 40 + size + 22, f"{shown} represented", 10, color="#555")
    for i in range(models.W.shape[2]):
        c.rect(14 + 70 * i, size + 74, 10, 10, FEATURE_COLORS[i % len(FEATURE_COLORS)])
        c.text(28 + 70 * i, size + 83, f"feature {i}", 10, anchor="start")
    return c


@dataclass
class SuperpositionReport:
    phase: PhaseDiagram
    dimensionality: ToyModels
    geometry: ToyModels
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        pd = self.phase
        lines = [
            "phase diagram (n=2, m=1): cells per phase "
            + ", ".join(f"{k}: {v}" for k, v in pd.counts().items())
        ]
        lines.append(
            "  density \\ importance of feature 2: "
            + " ".join(f"{float(r):5.2g}" for r in pd.relative_importance)
        )
        marks = "12S-"
        for i in reversed(range(len(pd.densities))):
            row = " ".join(f"{marks[int(k)]:>5}" for k in pd.phase[i])
            lines.append(f"  {float(pd.densities[i]):>33.3g}: {row}")
        lines.append("  (1: only feature 1, 2: only feature 2, S: both, antipodal)")
        dm = self.dimensionality
        n, m = dm.W.shape[2], dm.W.shape[1]
        lines.append(f"dimensions per feature (n={n}, m={m}): 1/(1-S) -> m/||W||_F^2")
        pairs = zip((1 / (1 - dm.sparsity)).tolist(), dm.dimensions_per_feature().tolist())
        lines.append("  " + ", ".join(f"{x:.3g} -> {y:.2f}" for x, y in pairs))
        g = self.geometry
        lines.append("geometry (n=5, m=2): sparsity -> features represented, mean dimensionality of those")
        for S, norms, dims in zip(g.sparsity.tolist(), g.norms(), g.feature_dimensionality()):
            shown = norms > 0.5
            mean = float(dims[shown].mean()) if shown.any() else 0.0
            lines.append(f"  S = {S:<6g} {int(shown.sum())} represented, dimensionality {mean:.2f}")
        if self.files:
            lines.append("wrote " + ", ".join(str(f) for f in self.files))
        return "\n".join(lines)


def superposition_report(
    out: str | Path | None = None, *, seed: int = 0, quick: bool = False
) -> SuperpositionReport:
    """Train all three experiments (seconds on a CPU) and, with ``out``, write the three SVG figures."""
    scale = 0.5 if quick else 1.0
    report = SuperpositionReport(
        phase=phase_diagram(steps=int(600 * scale), seed=seed),
        dimensionality=dimensionality_sweep(steps=int(1000 * scale), seed=seed),
        geometry=geometry_panels(steps=int(1000 * scale), seed=seed),
    )
    if out is not None:
        out = Path(out)
        report.files = [
            phase_diagram_svg(report.phase).save(out / "phase_diagram.svg"),
            dimensionality_svg(report.dimensionality).save(out / "dimensionality.svg"),
            geometry_svg(report.geometry).save(out / "geometry_m2.svg"),
        ]
    return report

"""Toy models of superposition: n sparse features squeezed through m < n hidden dimensions.

The model is ``x' = ReLU(W^T W x + b)`` with ``W`` (m, n) and ``b`` (n,). Each feature is 0 with
probability ``S`` (the sparsity) and otherwise uniform on [0, 1]; the loss is the importance-weighted
squared error ``sum_i I_i (x_i - x'_i)^2``, averaged over inputs. Column ``W[:, i]`` is feature i's
direction in the hidden space: a feature is *represented* when its column has norm near 1.

Many independent models (*instances*, each with its own importances and sparsity) train at once as
one batched computation. Training samples the features as active with probability
``q = max(1 - S, min(1/2, 2/n))`` instead of ``1 - S`` and weights each sample by its likelihood
ratio: an unbiased estimate of the same expected loss whose variance stays small when features are
very sparse, so that a thousand Adam steps suffice on a CPU.

Shapes: I instances, B samples, n features, m hidden dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clew.errors import ClewError


@dataclass
class ToyModels:
    """A batch of trained toy models."""

    W: Tensor
    """(I, m, n) each instance's embedding; column i is feature i's direction."""
    b: Tensor
    """(I, n) each instance's output bias."""
    loss: Tensor
    """(I,) the expected loss, estimated on a large fresh sample."""
    importance: Tensor
    """(I, n) the per-feature importances."""
    sparsity: Tensor
    """(I,) the probability that a feature is zero."""

    @property
    def n_hidden(self) -> int:
        return self.W.shape[1]

    def norms(self) -> Tensor:
        """(I, n) ``||W_i||``: about 1 for a represented feature, about 0 for an ignored one."""
        return self.W.norm(dim=1)

    def dimensions_per_feature(self) -> Tensor:
        """(I,) ``m / ||W||_F^2``: the hidden dimensions spent per represented feature (1 without
        superposition, 1/2 for antipodal pairs, 2/5 for pentagons ...)."""
        return self.n_hidden / self.W.pow(2).sum((1, 2))

    def feature_dimensionality(self) -> Tensor:
        """(I, n) ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``: the fraction of a dimension feature i
        has to itself (1 alone in its direction, 1/2 in an antipodal pair, 0 when not represented)."""
        W = self.W  # (I, m, n)
        norms = W.norm(dim=1, keepdim=True)  # (I, 1, n)
        unit = W / norms.clamp_min(1e-8)
        overlaps = unit.transpose(1, 2) @ W  # (I, n, n): [i, j] = W_i_hat . W_j
        return norms[:, 0] ** 2 / overlaps.pow(2).sum(-1).clamp_min(1e-12)

    def __call__(self, x: Tensor) -> Tensor:
        """(I, B, n) -> (I, B, n) the reconstruction."""
        return forward(self.W, self.b, x)


def forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """``ReLU(W^T W x + b)`` for (I, m, n) ``W``, (I, n) ``b`` and (I, B, n) ``x``."""
    hidden = x @ W.transpose(1, 2)  # (I, B, m)
    return torch.relu(hidden @ W + b[:, None])


def sample(sparsity: Tensor, n: int, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A weighted sample of inputs: x (I, B, n) and weights (I, B) with ``sum_b w_b f(x_b)`` an unbiased
    estimate of ``E f(x)`` for features that are zero with probability ``sparsity`` (I,)."""
    p = (1 - sparsity)[:, None, None]  # (I, 1, 1) the true probability of being active
    q = p.clamp_min(min(0.5, 2 / n))  # the sampling probability
    I = len(sparsity)
    active = torch.rand(I, batch, n, generator=generator) < q
    x = torch.rand(I, batch, n, generator=generator) * active
    ratio = torch.where(active, p / q, (1 - p) / (1 - q).clamp_min(1e-12))  # (I, B, n)
    return x, ratio.prod(-1) / batch


def weighted_loss(W: Tensor, b: Tensor, importance: Tensor, x: Tensor, weights: Tensor) -> Tensor:
    """(I,) the importance-weighted squared error of each instance on a weighted sample."""
    err = importance[:, None] * (x - forward(W, b, x)) ** 2  # (I, B, n)
    return (err.sum(-1) * weights).sum(-1)


def train_toys(
    importance: Tensor,
    sparsity: Tensor,
    n_hidden: int,
    *,
    steps: int = 1000,
    batch: int = 256,
    lr: float = 3e-2,
    seed: int = 0,
    init: Tensor | None = None,
) -> ToyModels:
    """Train I toy models at once: ``importance`` (I, n), ``sparsity`` (I,), ``n_hidden`` = m.

    Adam with a cosine-decaying learning rate; ``init`` (I, m, n) starts ``W`` somewhere chosen
    (default: Gaussian with variance 2 / (m + n)); the bias starts at zero.
    """
    importance = torch.as_tensor(importance, dtype=torch.float32)
    sparsity = torch.as_tensor(sparsity, dtype=torch.float32).flatten()
    if importance.dim() != 2 or len(importance) != len(sparsity):
        raise ClewError(
            f"importance must be (instances, features) and sparsity (instances,); got "
            f"{tuple(importance.shape)} and {tuple(sparsity.shape)}"
        )
    I, n = importance.shape
    if not 0 < n_hidden < n:
        raise ClewError(f"the hidden width must be between 1 and n_features - 1 = {n - 1}, got {n_hidden}")
    if ((sparsity < 0) | (sparsity >= 1)).any():
        raise ClewError("sparsity must be in [0, 1): the probability that a feature is zero")
    g = torch.Generator().manual_seed(seed)
    if init is None:
        init = torch.randn(I, n_hidden, n, generator=g) * (2 / (n_hidden + n)) ** 0.5
    W = init.clone().float().requires_grad_(True)
    b = torch.zeros(I, n, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x, w = sample(sparsity, n, batch, g)
        loss = weighted_loss(W, b, importance, x, w).sum()  # instances are independent: sum their losses
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        x, w = sample(sparsity, n, 16384, g)
        final = weighted_loss(W, b, importance, x, w)
    return ToyModels(W.detach(), b.detach(), final, importance, sparsity)


def best_of(runs: list[ToyModels]) -> ToyModels:
    """Instance by instance, the run with the lowest loss (the landscape has local minima)."""
    losses = torch.stack([r.loss for r in runs])  # (R, I)
    pick = losses.argmin(0)  # (I,)
    idx = torch.arange(losses.shape[1])
    return ToyModels(
        W=torch.stack([r.W for r in runs])[pick, idx],
        b=torch.stack([r.b for r in runs])[pick, idx],
        loss=losses[pick, idx],
        importance=runs[0].importance,
        sparsity=runs[0].sparsity,
    )


# --- the n = 2, m = 1 phase diagram ------------------------------------------------------------------------

PHASES = ("only feature 1", "only feature 2", "both in superposition", "neither")
REPRESENTED = 0.5  # a feature with ||W_i|| above this is represented


def classify(W: Tensor) -> int:
    """The phase (an index into :data:`PHASES`) of one n=2 model from its (m, 2) embedding: a feature is
    represented when its norm exceeds 1/2; two represented features are in superposition (in m=1 they
    are antipodal: columns of opposite sign)."""
    n1, n2 = W.norm(dim=0).tolist()
    one, two = n1 > REPRESENTED, n2 > REPRESENTED
    if one and two:
        return 2
    if one:
        return 0
    if two:
        return 1
    return 3


@dataclass
class PhaseDiagram:
    densities: Tensor
    """(a,) feature density ``1 - S`` of each row."""
    relative_importance: Tensor
    """(c,) importance of feature 2 (feature 1 has importance 1) of each column."""
    phase: Tensor
    """(a, c) index into :data:`PHASES`."""
    models: ToyModels
    """the a * c trained models, row-major."""

    def counts(self) -> dict[str, int]:
        return {name: int((self.phase == k).sum()) for k, name in enumerate(PHASES)}


def phase_diagram(
    densities: Tensor | None = None,
    relative_importance: Tensor | None = None,
    *,
    steps: int = 600,
    seed: int = 0,
) -> PhaseDiagram:
    """Train an n=2, m=1 model at every (density, relative importance) and classify it.

    Each cell is trained from two starts, a random one and the antipodal pair ``W = [1, -1]``, and
    the run with the lower loss is kept; either start can end in any phase.
    """
    densities = torch.logspace(-2, 0, 13) if densities is None else torch.as_tensor(densities).float()
    relative = (
        torch.logspace(-1, 1, 13)
        if relative_importance is None
        else torch.as_tensor(relative_importance).float()
    )
    d, r = torch.meshgrid(densities, relative, indexing="ij")
    importance = torch.stack([torch.ones(d.numel()), r.flatten()], 1)  # (I, 2)
    sparsity = 1 - d.flatten()
    antipodal = torch.tensor([[[1.0, -1.0]]]).expand(len(sparsity), 1, 2)
    runs = [
        train_toys(importance, sparsity, 1, steps=steps, seed=seed),
        train_toys(importance, sparsity, 1, steps=steps, seed=seed + 1, init=antipodal),
    ]
    models = best_of(runs)
    phase = torch.tensor([classify(w) for w in models.W]).view(len(densities), len(relative))
    return PhaseDiagram(densities, relative, phase, models)


# --- geometry ------------------------------------------------------------------------------------------------


def dimensionality_sweep(
    n_features: int = 20,
    n_hidden: int = 5,
    densities: Tensor | None = None,
    *,
    steps: int = 1000,
    seed: int = 0,
) -> ToyModels:
    """Models with equally important features over a range of densities ``1 - S`` (default 1 .. 0.01):
    how many dimensions each feature gets as the features get sparser."""
    densities = torch.logspace(0, -2, 17) if densities is None else torch.as_tensor(densities).float()
    importance = torch.ones(len(densities), n_features)
    return train_toys(importance, 1 - densities, n_hidden, steps=steps, seed=seed, lr=2e-2)


def geometry_panels(
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99, 0.999),
    n_features: int = 5,
    decay: float = 0.9,
    *,
    steps: int = 1000,
    seed: int = 0,
    starts: int = 2,
) -> ToyModels:
    """Five features in two dimensions, importance ``decay ** i``, at rising sparsity: from the two most
    important features on orthogonal axes, through antipodal pairs, to all five on a pentagon.
    ``starts`` random starts per sparsity; the lowest loss is kept."""
    S = torch.tensor(sparsities, dtype=torch.float32)
    importance = (decay ** torch.arange(n_features, dtype=torch.float32)).expand(len(S), n_features)
    runs = [train_toys(importance, S, 2, steps=steps, seed=seed + k) for k in range(starts)]
    return best_of(runs)

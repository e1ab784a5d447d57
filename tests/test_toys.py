"""Toy models of superposition: the two ends of the n=2, m=1 transition, and the geometry measures."""

from __future__ import annotations

import math

import pytest
import torch

from clew.errors import ClewError
from clew.toys import PHASES, ToyModels, classify, train_toys
from clew.toys.figures import dimensionality_svg, geometry_svg, phase_diagram_svg
from clew.toys.superposition import best_of, phase_diagram, sample


def test_dense_features_keep_only_the_more_important_one():
    models = train_toys(torch.tensor([[1.0, 0.5]]), torch.tensor([0.0]), 1, steps=600)
    n1, n2 = models.norms()[0].tolist()
    assert abs(n1 - 1) < 0.1 and n2 < 0.1, models.W
    assert PHASES[classify(models.W[0])] == "only feature 1"


def test_sparse_features_share_the_dimension_antipodally():
    # a single random start can stall in a local minimum (feature 2 weakly aligned with feature 1):
    # the lowest loss of a few starts is the antipodal pair
    runs = [
        train_toys(torch.tensor([[1.0, 0.5]]), torch.tensor([0.99]), 1, steps=600, seed=k) for k in range(4)
    ]
    models = best_of(runs)
    w1, w2 = models.W[0, 0].tolist()
    assert w1 * w2 < 0, models.W
    assert 0.8 < abs(w1) < 1.3 and 0.8 < abs(w2) < 1.3, models.W
    assert PHASES[classify(models.W[0])] == "both in superposition"


def test_weighted_sample_is_unbiased():
    g = torch.Generator().manual_seed(0)
    S = torch.tensor([0.0, 0.9, 0.999])
    x, w = sample(S, 4, 200_000, g)
    mean = (x * w[..., None]).sum(1)  # (I, n): E x_i = (1 - S) / 2
    assert torch.allclose(mean, ((1 - S) / 2)[:, None].expand(3, 4), rtol=0.05, atol=1e-4)
    assert torch.allclose(w.sum(1), torch.ones(3), rtol=0.05)


def test_geometry_measures():
    pentagon = torch.stack(
        [torch.tensor([math.cos(a), math.sin(a)]) for a in 2 * math.pi * torch.arange(5) / 5], 1
    )
    W = torch.stack(
        [
            torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # two orthogonal features, one ignored
            torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),  # an antipodal pair and one alone
        ]
    )
    m = ToyModels(W, torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), torch.zeros(2))
    assert torch.allclose(m.feature_dimensionality(), torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.5, 1.0]]))
    assert torch.allclose(m.dimensions_per_feature(), torch.tensor([1.0, 2 / 3]))
    p = ToyModels(pentagon[None], torch.zeros(1, 5), torch.zeros(1), torch.ones(1, 5), torch.zeros(1))
    assert torch.allclose(p.dimensions_per_feature(), torch.tensor([0.4]))
    assert torch.allclose(p.feature_dimensionality(), torch.full((1, 5), 0.4), atol=1e-6)


def test_small_phase_diagram_and_figures(tmp_path):
    pd = phase_diagram(torch.tensor([0.01, 1.0]), torch.tensor([0.2, 5.0]), steps=400)
    assert pd.phase.tolist() == [[2, 2], [0, 1]]  # sparse: superposition; dense: the more important
    superposed = pd.models.W[pd.phase.flatten() == 2, 0]
    assert (superposed[:, 0] * superposed[:, 1] < 0).all()
    for canvas, name in (
        (phase_diagram_svg(pd), "p.svg"),
        (dimensionality_svg(pd.models), "d.svg"),
        (geometry_svg(train_toys(torch.ones(2, 3), torch.tensor([0.0, 0.9]), 2, steps=50)), "g.svg"),
    ):
        text = canvas.save(tmp_path / name).read_text()
        assert text.startswith("<svg") and text.rstrip().endswith("</svg>")


def test_mistakes_are_one_line_errors():
    with pytest.raises(ClewError):
        train_toys(torch.ones(2, 3), torch.tensor([0.5]), 1)
    with pytest.raises(ClewError):
        train_toys(torch.ones(1, 3), torch.tensor([0.5]), 3)
    with pytest.raises(ClewError):
        train_toys(torch.ones(1, 3), torch.tensor([1.0]), 1)

"""Toy models: small trained models whose answers are known, to see interpretability phenomena plainly.

``clew.toys.superposition`` trains the ReLU output model of superposition, ``x' = ReLU(W^T W x + b)``;
``clew.toys.figures`` draws its phase diagram and feature geometry as SVG files.
"""

from clew.toys.figures import SuperpositionReport, superposition_report
from clew.toys.superposition import (
    PHASES,
    PhaseDiagram,
    ToyModels,
    classify,
    dimensionality_sweep,
    geometry_panels,
    phase_diagram,
    train_toys,
)

__all__ = [
    "PHASES",
    "PhaseDiagram",
    "SuperpositionReport",
    "ToyModels",
    "classify",
    "dimensionality_sweep",
    "geometry_panels",
    "phase_diagram",
    "superposition_report",
    "train_toys",
]

"""Interventions: testing what an attribution graph claims by changing the model and watching.

- :mod:`~clew.intervene.spec`: what to change (a feature, an error node, an embedding; set, scale or
  zero; at some positions or from one onward; steering vectors) and the one syntax to write it.
- :func:`intervene`: run a prompt with interventions, ``constrained`` (the frozen local replacement
  model: direct effects only, exactly the graph's edges) or ``free`` (the real model, errors frozen or
  live); :func:`generate` continues a prompt with interventions at every step.
- :func:`check_claims`: a graph's predicted change of each target beside the measured ones.
- :func:`swap_experiment`: take out the features a prompt's answer rests on and put in another
  prompt's, found from the two graphs, beside matched random controls.
"""

from clew.intervene.run import ERRORS, MODES, Outcome, generate, intervene, run_free
from clew.intervene.spec import Edit, Interventions, Node, Steer, parse_edit, parse_node, parse_steer

__all__ = [
    "ERRORS",
    "MODES",
    "Edit",
    "Interventions",
    "Node",
    "Outcome",
    "Steer",
    "generate",
    "intervene",
    "parse_edit",
    "parse_node",
    "parse_steer",
    "run_free",
]

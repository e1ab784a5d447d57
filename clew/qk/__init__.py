"""QK attribution: why an attention head attends where it does.

- :func:`qk_attribution`: one head's score at one (query, key) pair as an exact sum over pairs of
  query-side and key-side pieces (the graph's nodes, each earlier head's output, skip paths, biases).
- :func:`qk_query`: every head and key at one query position.
- :func:`expand_head`: a head piece of one side split over what that head read (its value side).
- :func:`annotate_heads`: the head nodes of a routed graph (:mod:`clew.attribution.head_graph`),
  each with why it attends to its top key.
- :func:`residual_terms`: the residual stream entering a layer at a position, as labelled pieces;
  :func:`head_value_terms`: one head's output at a position, as the pieces it read.
"""

from clew.qk.attribution import QKAttribution, expand_head, qk_attribution, qk_query
from clew.qk.routed import annotate_heads
from clew.qk.terms import Terms, head_value_terms, residual_terms

__all__ = [
    "QKAttribution",
    "annotate_heads",
    "Terms",
    "expand_head",
    "head_value_terms",
    "qk_attribution",
    "qk_query",
    "residual_terms",
]

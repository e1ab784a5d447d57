"""QK attribution: why an attention head attends where it does.

- :func:`qk_attribution`: one head's score at one (query, key) pair as an exact sum over pairs of
  query-side and key-side pieces (the graph's nodes, each earlier head's output, skip paths, biases).
- :func:`qk_query`: every head and key at one query position.
- :func:`residual_terms`: the residual stream entering a layer at a position, as labelled pieces.
"""

from clew.qk.attribution import QKAttribution, qk_attribution, qk_query
from clew.qk.terms import Terms, residual_terms

__all__ = ["QKAttribution", "Terms", "qk_attribution", "qk_query", "residual_terms"]

"""The shipped organism through the same code paths as any model: exact edges, the planted answer."""

from __future__ import annotations

import pytest

from clew.attribution import check_graph, prune, scores, trace
from clew.resolve import load_model_and_dictionary


@pytest.fixture(scope="module", params=["clt", "plt"])
def organism(request):
    from clew.assets import ORGANISM

    return load_model_and_dictionary("organism", str(ORGANISM.dictionary_path(request.param)))


def test_dallas_two_hop_graph_is_exact(organism):
    model, tc = organism
    graph = trace(model, tc, "The capital of the state containing Dallas is", progress=False)
    assert graph.logit_labels[0].strip() == "Austin" and graph.logit_probs[0] > 0.5
    check = check_graph(model, tc, graph, max_sources=96)
    assert check.max_edge_error < 1e-4 and check.max_sum_error < 1e-4
    s = scores(graph, keep=prune(graph).node_mask)
    assert 0 < s.replacement <= 1 and 0 < s.completeness <= 1

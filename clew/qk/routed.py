"""The QK side of head nodes: why each head node of a routed graph attends where it does.

A head node (:mod:`clew.attribution.head_graph`) stands for what one head moved into one query
position. Its in-edges are the value side (what it moved); this module adds the other side, the
reason it moved it: for the key it attends to most among the earlier positions, the score's exact
QK attribution (:func:`~clew.qk.qk_attribution`): the top (query piece x key piece) pairs and each
side's top pieces. They are stored on the head graph (``HeadGraph.qk``, saved in its file) as
annotations, not as edges: a pair's contribution is to an attention score, not to a node's input,
and mixing the two kinds of weight in one adjacency would make influence meaningless.
"""

from __future__ import annotations

import torch

from clew.attribution.head_graph import HeadGraph
from clew.qk.attribution import qk_attribution
from clew.replacement import LocalReplacement


@torch.no_grad()
def annotate_heads(local: LocalReplacement, hg: HeadGraph, nodes: list[int], k: int = 3) -> None:
    """Write into ``hg.qk`` why each of the head nodes ``nodes`` attends to its top earlier key: the
    attention weight, the score (and Gemma-2's capped score), the ``k`` top pairs and each side's ``k``
    top pieces, leaving out the constants (biases: they are the same whatever the prompt), whose pairs'
    total is kept as ``constants``. ``local`` is the graph's prompt's local replacement model."""
    for i in nodes:
        layer, head, query = (int(v) for v in hg.heads[i])
        if query == 0:
            continue
        pattern = local.cache.patterns[layer][0, head, query, :query].float()
        key = int(pattern.argmax())
        r = qk_attribution(local, layer, head, query, key)
        q_var = torch.tensor([kind != "bias" for kind in r.query_terms.kinds])
        k_var = torch.tensor([kind != "bias" for kind in r.key_terms.kinds])
        pairs = r.pairs * q_var[:, None] * k_var[None, :]
        order = pairs.flatten().abs().argsort(descending=True)[:k].tolist()
        nk = pairs.shape[1]
        hg.qk[hg.head_key(i)] = {
            "key": key,
            "weight": round(float(pattern[key]), 6),
            "score": round(r.score, 6),
            "capped": None if r.capped is None else round(r.capped, 6),
            "pairs": [
                [
                    r.query_terms.labels[j // nk],
                    r.key_terms.labels[j % nk],
                    round(float(pairs.flatten()[j]), 6),
                ]
                for j in order
            ],
            "query_side": _top(r.query_terms.labels, r.query_marginals, q_var, k),
            "key_side": _top(r.key_terms.labels, r.key_marginals, k_var, k),
            "constants": round(float((r.pairs * ~(q_var[:, None] & k_var[None, :])).sum()), 6),
        }


def _top(labels: list[str], marginals: torch.Tensor, keep: torch.Tensor, k: int) -> list[list]:
    """The ``k`` kept pieces of largest |marginal|, as [label, marginal]."""
    values = marginals * keep
    order = values.abs().argsort(descending=True)[:k].tolist()
    return [[labels[j], round(float(values[j]), 6)] for j in order if keep[j]]

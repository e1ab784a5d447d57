"""Automatic first labels for feature nodes: the tokens each feature's output promotes.

A feature's total write (:func:`~clew.replacement.logit_weights.logit_weights`: its decoder rows summed
over the layers it writes to, through the norms' weights) is read through the unembedding: the
tokens whose logits it raises most directly. It is a
first guess, a starting point for the researcher's own labels, not a description of the feature.
"""

from __future__ import annotations

import torch

from clew.attribution.graph import Graph
from clew.dictionaries import Transcoder
from clew.models import Transformer
from clew.replacement.logit_weights import logit_weights


@torch.no_grad()
def promoted_token_labels(
    model: Transformer, transcoder: Transcoder, graph: Graph, k: int = 3
) -> dict[int, str]:
    """node index -> ``"↑tok1 tok2 tok3"`` for every feature node of the graph."""
    labels: dict[int, str] = {}
    if graph.n_features == 0:
        return labels
    device = model.embed.weight.device
    unembed = model.unembed.weight.float()  # (V, D)
    for layer in graph.features[:, 0].unique().tolist():
        nodes = (graph.features[:, 0] == layer).nonzero().squeeze(1)
        idx = graph.features[nodes, 2].to(device)
        logits = logit_weights(model, transcoder, layer, idx) @ unembed.T  # (n, V)
        top = logits.topk(k, dim=-1).indices.tolist()
        for node, ids in zip(nodes.tolist(), top):
            words = (
                [model.tokenizer.decode([i]).strip() or repr(model.tokenizer.decode([i])) for i in ids]
                if model.tokenizer
                else [str(i) for i in ids]
            )
            labels[node] = "↑" + " ".join(words)
    return labels

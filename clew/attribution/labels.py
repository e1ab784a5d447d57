"""Automatic first labels for feature nodes: the tokens each feature's output promotes.

A feature's total write (its decoder rows summed over the layers it writes to) is read through the
final norm's weight and the unembedding: the tokens whose logits it raises most directly. It is a
first guess, a starting point for the researcher's own labels, not a description of the feature.
"""

from __future__ import annotations

import torch

from clew.attribution.graph import Graph
from clew.dictionaries import Transcoder
from clew.models import Transformer


@torch.no_grad()
def promoted_token_labels(
    model: Transformer, transcoder: Transcoder, graph: Graph, k: int = 3
) -> dict[int, str]:
    """node index -> ``"↑tok1 tok2 tok3"`` for every feature node of the graph."""
    labels: dict[int, str] = {}
    if graph.n_features == 0:
        return labels
    device = model.embed.weight.device
    norm_w = model.ln_final.weight.float() + model.ln_final.offset  # (D,)
    unembed = model.unembed.weight.float()  # (V, D)
    for layer in graph.features[:, 0].unique().tolist():
        nodes = (graph.features[:, 0] == layer).nonzero().squeeze(1)
        idx = graph.features[nodes, 2].to(device)
        write = sum(
            transcoder.decoder_vectors(layer, idx, dst).float() for dst in transcoder.dst_layers(layer)
        )  # (n, D)
        logits = (write * norm_w) @ unembed.T  # (n, V)
        top = logits.topk(k, dim=-1).indices.tolist()
        for node, ids in zip(nodes.tolist(), top):
            words = (
                [model.tokenizer.decode([i]).strip() or repr(model.tokenizer.decode([i])) for i in ids]
                if model.tokenizer
                else [str(i) for i in ids]
            )
            labels[node] = "↑" + " ".join(words)
    return labels

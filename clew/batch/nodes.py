"""One graph seen by identity: each node's key, its share of the graph's influence, whether pruning
kept it, and the kept edges between keys. What aggregation and comparison count and average.

A feature's identity is ``(layer, index)``: the same dictionary feature wherever it fires. Errors are
keyed by layer, embeddings by token, logits by their label. Positions are summed over unless a caller
asks for them (``slot``), because two prompts rarely share positions beyond a template's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clew.attribution import Graph, prune

Key = tuple
"""("F", layer, index) | ("E", layer) | ("T", token) | ("L", label), optionally followed by a slot."""


@dataclass
class View:
    """A graph's nodes and kept edges by key, positions summed (or kept apart by ``slot``)."""

    influence: dict[Key, float]
    """Each key's share of the influence of all features and errors (0..1; summed over its nodes)."""
    activation: dict[Key, float]
    """Features: the largest activation among the key's nodes."""
    kept: set[Key]
    """Keys with at least one node kept by pruning."""
    edges: dict[tuple[Key, Key], float]
    """(source key, target key) -> summed weight of the kept edges between their nodes."""


def node_keys(graph: Graph, slot: Callable[[int], object] | None = None) -> list[Key]:
    """The key of every node of ``graph`` (in its node order); ``slot(position)`` appended when given."""
    keys: list[Key] = []
    feats = graph.features.tolist()
    for node in range(graph.n_nodes):
        kind = graph.kind(node)
        layer, pos = graph.layer_pos(node)
        if kind == "feature":
            key: Key = ("F", feats[node][0], feats[node][2])
        elif kind == "error":
            key = ("E", layer)
        elif kind == "embedding":
            key = ("T", graph.token_strings[pos])
        else:
            key = ("L", graph.logit_labels[node - graph.logit_offset])
        keys.append(key + (slot(pos),) if slot is not None else key)
    return keys


def view(
    graph: Graph,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    slot: Callable[[int], object] | None = None,
) -> View:
    """Prune ``graph`` once and sum its nodes and kept edges by key."""
    pruned = prune(graph, node_threshold, edge_threshold)
    keys = node_keys(graph, slot)
    kinds = graph.kinds()
    inf = pruned.influence.double()
    total = float(inf[(kinds == 0) | (kinds == 1)].sum()) or 1.0
    influence: dict[Key, float] = {}
    activation: dict[Key, float] = {}
    for node, value in enumerate((inf / total).tolist()):
        influence[keys[node]] = influence.get(keys[node], 0.0) + value
    for node, act in enumerate(graph.activations.tolist()):
        activation[keys[node]] = max(activation.get(keys[node], 0.0), act)
    kept = {keys[n] for n in torch.nonzero(pruned.node_mask).squeeze(1).tolist()}
    edges: dict[tuple[Key, Key], float] = {}
    rows = graph.row_nodes().tolist()
    r_idx, c_idx = torch.nonzero(pruned.edge_mask, as_tuple=True)
    weights = graph.adjacency[r_idx, c_idx].tolist()
    for r, c, w in zip(r_idx.tolist(), c_idx.tolist(), weights):
        pair = (keys[c], keys[rows[r]])
        edges[pair] = edges.get(pair, 0.0) + w
    return View(influence, activation, kept, edges)


def describe(key: Key, labels: dict[tuple[int, int], str] | None = None) -> str:
    """``L2/F345 ↑Austin``, ``error L1``, ``token ' Dallas'``, ``logit ' Austin'``."""
    kind = key[0]
    if kind == "F":
        text = f"L{key[1]}/F{key[2]}"
        if labels and (key[1], key[2]) in labels:
            text += f" {labels[(key[1], key[2])]}"
        return text
    if kind == "E":
        return f"error L{key[1]}"
    if kind == "T":
        return f"token {key[1]!r}"
    return f"logit {key[1]!r}"


def promoted_labels(
    model_name: str, dictionary: str, features: set[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """First labels (the tokens each feature promotes, ``clew.attribution.labels``) for (layer, index) pairs."""
    from clew.attribution.labels import promoted_token_labels
    from clew.dictionaries import load_transcoder
    from clew.models import load_model

    if not features:
        return {}
    model = load_model(model_name)
    tc = load_transcoder(dictionary, device=model.embed.weight.device, dtype=model.embed.weight.dtype)
    ordered = sorted(features)
    holder = Graph(
        prompt="",
        tokens=torch.zeros(1, dtype=torch.long),
        token_strings=[""],
        n_layers=model.cfg.n_layers,
        features=torch.tensor([[layer, 0, index] for layer, index in ordered], dtype=torch.long),
        activations=torch.zeros(len(ordered)),
        logit_tokens=torch.zeros(0, dtype=torch.long),
        logit_probs=torch.zeros(0),
        logit_labels=[],
        adjacency=torch.zeros(0, 0),
    )
    found = promoted_token_labels(model, tc, holder)
    return {ordered[node]: label for node, label in found.items()}

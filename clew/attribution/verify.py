"""Checking a graph against the model it came from, independently of the engine's backward pass.

The frozen replacement model is run *forward* (:func:`clew.replacement.frozen.frozen_forward`, through
the ordinary ``Transformer.run_layers``), with patterns and scales frozen, feature activations and
error vectors held at their clean values, and one source perturbed per batch row: adding a source's vector at its write point must move every
target by exactly that source's edge weight (the map is linear, so the step size is 1). A second
check: each target's value equals the sum of its incoming edges plus the contribution of the biases,
which is the target's value with every source set to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clew.attribution.engine import Engine
from clew.attribution.graph import Graph
from clew.dictionaries import Transcoder
from clew.models import Transformer
from clew.replacement.frozen import frozen_forward


def frozen_target_values(
    engine: Engine,
    features: Tensor,
    directions: Tensor,
    embed_extra: Tensor | None = None,
    write_extra: dict[int, Tensor] | None = None,
    scale_sources: float = 1.0,
) -> Tensor:
    """(B, n_targets) the targets' values in the frozen replacement model, one row per perturbation.

    ``features`` are indices into the engine's feature table (their pre-activations are targets);
    ``directions`` (T, D) are read at the final norm's output at the last position. ``scale_sources``
    scales every source (embeddings, features' writes, errors): 0 leaves only the biases.
    """
    run = frozen_forward(
        engine, embed_extra=embed_extra, write_extra=write_extra, scale_sources=scale_sources
    )
    values = run.normed[:, -1] @ directions.T  # (B, T)
    layer, pos, index = engine.feat_layer[features], engine.feat_pos[features], engine.feat_index[features]
    B = len(values)
    feature_values = (
        torch.stack([run.pre_activations[int(l)][:, int(p), int(i)] for l, p, i in zip(layer, pos, index)], 1)
        if len(features)
        else torch.zeros(B, 0, device=engine.device)
    )
    return torch.cat([feature_values, values], 1)


@dataclass
class Check:
    max_edge_error: float
    """Largest |measured effect - edge weight| over the checked edges, relative to the largest edge."""
    max_sum_error: float
    """Largest |target value - (sum of incoming edges + biases)|, relative to the largest value."""
    n_sources: int
    n_targets: int


@torch.no_grad()
def check_rows(
    engine: Engine, features: Tensor, directions: Tensor, rows: Tensor, columns: Tensor, complete: bool = True
) -> Check:
    """Compare adjacency ``rows`` (n_targets, C) of the engine's targets (the ``features`` then the
    ``directions``) with perturbations of the sources in ``columns`` (engine column numbers). With
    ``complete`` (the rows hold every source), also check that edges plus biases give each value."""
    L, P, D = engine.n_layers, engine.n_pos, engine.d_model
    B = len(columns)
    dev = engine.device
    embed_extra = torch.zeros(B, P, D, device=dev)
    write_extra = {layer: torch.zeros(B, P, D, device=dev) for layer in range(L)}
    for b, col in enumerate(columns.tolist()):
        kind = engine.layout.kind(col)
        if kind == "embedding":
            p = engine.source_position(col)
            embed_extra[b, p] = engine.embeddings[p]
        elif kind == "error":
            layer, p = engine.layout.error_layer_pos(col)
            write_extra[layer][b, p] = engine.errors[layer, p]
        else:
            src, p, i, a = (
                int(engine.feat_layer[col]),
                int(engine.feat_pos[col]),
                int(engine.feat_index[col]),
                float(engine.feat_act[col]),
            )
            for dst in engine.tc.dst_layers(src):
                write_extra[dst][b, p] += (
                    a * engine.tc.decoder_vectors(src, torch.tensor([i], device=dev), dst)[0].float()
                )
    clean = frozen_target_values(engine, features, directions)  # (1, n)
    perturbed = frozen_target_values(engine, features, directions, embed_extra, write_extra)  # (B, n)
    measured = (perturbed - clean).T  # (n, B)
    expected = rows[:, columns].float()
    scale = rows.abs().max().clamp_min(1e-12)
    edge_err = float((measured - expected).abs().max() / scale)

    sum_err = float("nan")
    if complete:
        biases = frozen_target_values(engine, features, directions, scale_sources=0.0)[0]  # (n,)
        total = rows.float().sum(1) + biases
        sum_err = float((total - clean[0]).abs().max() / clean.abs().max().clamp_min(1e-12))
    return Check(edge_err, sum_err, B, len(rows))


@torch.no_grad()
def check_graph(
    model: Transformer, transcoder: Transcoder, graph: Graph, max_sources: int | None = 256, seed: int = 0
) -> Check:
    """Re-run the prompt and check the graph's edges against perturbations of (a sample of) its sources."""
    engine = Engine(model, transcoder, graph.tokens.to(model.embed.weight.device))
    dev = engine.device
    features = engine.feature_numbers(graph.features, graph.describe)  # graph features -> engine features
    directions = (
        graph.logit_vectors.to(dev)
        if graph.logit_vectors is not None
        else engine.logit_directions(graph.logit_tokens.to(dev))
    )
    graph_cols = graph.layout.columns_in(engine.layout, features)  # the graph's sources, in engine numbering
    n_src = len(graph_cols)
    pick = torch.arange(n_src)
    if max_sources is not None and n_src > max_sources:
        pick = torch.randperm(n_src, generator=torch.Generator().manual_seed(seed))[:max_sources]
    rows = torch.zeros(graph.adjacency.shape[0], engine.n_columns, device=dev)
    rows[:, graph_cols] = graph.adjacency[:, :n_src].float().to(dev)
    complete = len(features) == engine.n_features
    return check_rows(engine, features, directions, rows, graph_cols[pick.to(dev)], complete)

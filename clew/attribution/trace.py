"""``trace``: from a prompt to an attribution graph.

1. One clean forward pass (the :class:`Engine`) finds the nodes and freezes the rest.
2. The logit targets' rows are computed first.
3. Feature rows follow in batches: all of them when they fit the budget, else the most influential
   first, re-ranked by their influence on the logits through the rows computed so far.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clew.attribution.engine import Engine
from clew.attribution.graph import Graph
from clew.attribution.prune import chunk_rows, influence, row_sums
from clew.attribution.spill import zeros_for_rows
from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.models import Transformer
from clew.models.text import token_text
from clew.replacement import NodeLayout


@dataclass
class LogitTarget:
    """One output target: a direction at the final norm's output, with a weight and a label."""

    label: str
    vector: Tensor
    """(D,)"""
    prob: float
    token: int = -1


def tokenize(model: Transformer, prompt: str | Sequence[int] | Tensor) -> tuple[Tensor, list[str]]:
    """(P,) token ids and their strings, with the family's own beginning-of-sequence convention."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ClewError("the prompt is empty")
        if model.tokenizer is None:
            raise ClewError("the model has no tokenizer: pass token ids instead of text")
        ids = torch.tensor(model.tokenizer(prompt)["input_ids"], dtype=torch.long)
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten()
    if len(ids) == 0:
        raise ClewError("the prompt is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.vocab_size:
        raise ClewError(f"the prompt has token ids outside the vocabulary (0..{model.cfg.vocab_size - 1})")
    if len(ids) > model.cfg.n_ctx:
        raise ClewError(f"the prompt has {len(ids)} tokens; the model's context is {model.cfg.n_ctx}")
    return ids, token_strings(model, ids)


def token_strings(model: Transformer, ids: Tensor) -> list[str]:
    return [token_text(model.tokenizer, i) for i in ids.tolist()]


def token_id(model: Transformer, token: str | int) -> int:
    """A single token's id from its text (with or without a leading space) or the id itself."""
    if isinstance(token, int):
        if not 0 <= token < model.cfg.vocab_size:
            raise ClewError(
                f"target token id {token} is outside the vocabulary (0..{model.cfg.vocab_size - 1})"
            )
        return token
    if model.tokenizer is None:
        raise ClewError("the model has no tokenizer: give target tokens as ids")
    ids = model.tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ClewError(f"target {token!r} is not a single token (it is {len(ids)} tokens: {ids})")
    return ids[0]


def choose_targets(
    engine: Engine,
    model: Transformer,
    targets: Sequence[str | int] | None,
    contrast: tuple[str | int, str | int] | None,
    direction: Tensor | None,
    max_n_logits: int,
    desired_logit_prob: float,
) -> list[LogitTarget]:
    probs = torch.softmax(engine.logits[-1].float(), -1)  # (V,)
    if direction is not None:
        return [LogitTarget("direction", direction.float().to(engine.device), 1.0)]
    if contrast is not None:
        a, b = token_id(model, contrast[0]), token_id(model, contrast[1])
        dirs = engine.logit_directions(torch.tensor([a, b], device=engine.device))
        label = f"{_label(model, a)} - {_label(model, b)}"
        return [LogitTarget(label, dirs[0] - dirs[1], 1.0, a)]
    if targets:
        ids = [token_id(model, t) for t in targets]
    else:
        top = probs.sort(descending=True)
        cum = top.values.cumsum(0)
        n = int((cum < desired_logit_prob).sum()) + 1
        ids = top.indices[: min(n, max_n_logits)].tolist()
    dirs = engine.logit_directions(torch.tensor(ids, device=engine.device))
    return [LogitTarget(_label(model, i), dirs[k], float(probs[i]), i) for k, i in enumerate(ids)]


def _label(model: Transformer, token: int) -> str:
    return token_text(model.tokenizer, token)


@torch.no_grad()
def trace(
    model: Transformer,
    transcoder: Transcoder,
    prompt: str | Sequence[int] | Tensor,
    *,
    targets: Sequence[str | int] | None = None,
    contrast: tuple[str | int, str | int] | None = None,
    direction: Tensor | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    spill_dir: str | Path | None = None,
) -> Graph:
    """Compute the attribution graph of ``prompt`` through the model with its MLPs replaced by ``transcoder``.

    Targets are the top next tokens until their probabilities reach ``desired_logit_prob`` (at most
    ``max_n_logits``), or the given ``targets`` tokens, or the difference of two tokens' logits
    (``contrast``), or any ``direction`` (D,) at the final norm's output.

    Rows that would fill more than half of the available memory are kept in a temporary file in
    ``spill_dir`` (the system's temporary folder when None), removed as soon as it is opened
    (:mod:`clew.attribution.spill`).
    """
    started = time.perf_counter()
    for name, value in (("max_n_logits", max_n_logits), ("batch_size", batch_size)):
        if value is not None and (type(value) is not int or value < 1):
            raise ClewError(f"{name} must be a positive whole number, got {value!r}")
    if max_feature_nodes is not None and (type(max_feature_nodes) is not int or max_feature_nodes < 0):
        raise ClewError(f"max_feature_nodes must be a whole number >= 0, got {max_feature_nodes!r}")
    if not 0 < desired_logit_prob <= 1:
        raise ClewError(f"desired_logit_prob must be in (0, 1], got {desired_logit_prob}")
    tokens, strings = tokenize(model, prompt)
    model_dtype = next(model.parameters()).dtype
    engine = Engine(model, transcoder, tokens.to(model.embed.weight.device), dtype=dtype)
    _check_forward(engine)
    chosen = choose_targets(engine, model, targets, contrast, direction, max_n_logits, desired_logit_prob)
    logit_targets = engine.direction_targets(torch.stack([t.vector for t in chosen]))
    T = len(chosen)
    N = engine.n_features
    budget = N if max_feature_nodes is None else min(max_feature_nodes, N)
    dev = engine.device
    # the logits' rows, then the features': in memory, or in a file in spill_dir when they would crowd it
    rows, on_disk = zeros_for_rows((T + budget, engine.n_columns), dtype, dev, spill_dir)
    engine.rows(logit_targets, out=rows[:T])
    sums = torch.zeros(T + budget, device=dev)  # each row's absolute sum, taken while it is fresh
    sums[:T] = row_sums(rows[:T])
    visited = torch.zeros(N, dtype=torch.bool, device=dev)
    order: list[Tensor] = []
    done = 0
    bar = tqdm(total=budget, desc="attribution", unit="feature", disable=not progress, leave=False)
    if batch_size is None:  # ranking between batches favours small ones; without ranking, larger is faster
        batch_size = 1024 if budget == N else 256
    while done < budget:
        if budget == N:  # every feature gets a row: take them in (layer, position) order
            batch = torch.arange(done, min(done + batch_size, N), device=dev)
        else:
            batch = _most_influential(engine, rows[: T + done], sums[: T + done], chosen, order, visited)
            batch = batch[: min(batch_size, budget - done)]
        batch = batch[engine.batch_order(engine.feat_layer[batch], engine.feat_pos[batch])[0]]  # in place
        engine.rows(engine.feature_targets(batch), out=rows[T + done : T + done + len(batch)])
        sums[T + done : T + done + len(batch)] = row_sums(rows[T + done : T + done + len(batch)])
        visited[batch] = True
        order.append(batch)
        done += len(batch)
        bar.update(len(batch))
    bar.close()
    selected = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=dev)
    graph = _assemble(
        engine, model, transcoder, prompt, tokens, strings, chosen, selected, rows[T:], rows[:T]
    )
    graph.check_finite("the traced graph")
    graph.settings.update(
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
        dtype=str(dtype).removeprefix("torch."),
        model_dtype=str(model_dtype).removeprefix("torch."),
        n_active_features=N,
        rows_on_disk=on_disk,
        seconds=round(time.perf_counter() - started, 3),
    )
    return graph


def _check_finite_at(values: Tensor, layers: Tensor, what: str) -> None:
    bad = ~torch.isfinite(values)
    while bad.dim() > 1:
        bad = bad.any(-1)
    if bool(bad.any()):
        layer = int(layers[int(bad.nonzero()[0])])
        raise ClewError(
            f"{what} at layer {layer} are NaN or infinite: the model or dictionary overflowed there"
        )


def _check_forward(engine: Engine) -> None:
    """Stop before any row is computed when the clean forward pass gave NaN or infinities."""
    _check_finite_at(engine.feat_act, engine.feat_layer, "feature activations")
    errors = engine.errors
    _check_finite_at(errors.reshape(errors.shape[0], -1), torch.arange(errors.shape[0]), "error vectors")


def _most_influential(
    engine: Engine,
    rows: Tensor,
    sums: Tensor,
    chosen: list[LogitTarget],
    order: list[Tensor],
    visited: Tensor,
) -> Tensor:
    """Unvisited features by descending influence on the logits through the rows computed so far
    (``rows``: the logit rows, then the visited features' rows in visiting order)."""
    T = len(chosen)
    dev = engine.device
    done = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=dev)
    row_nodes = torch.cat([torch.full((T,), -1, device=dev), done])  # logits are never a column
    start = torch.cat(
        [torch.tensor([t.prob for t in chosen], device=dev), torch.zeros(len(done), device=dev)]
    )
    inf = influence(rows, row_nodes, start, sums=sums)[: engine.n_features]
    inf[visited] = -1.0
    return torch.argsort(inf, descending=True)[: int((~visited).sum())]


def _assemble(
    engine: Engine,
    model: Transformer,
    transcoder: Transcoder,
    prompt: str | Sequence[int] | Tensor,
    tokens: Tensor,
    strings: list[str],
    chosen: list[LogitTarget],
    selected: Tensor,
    feature_rows: Tensor,
    logit_rows: Tensor,
) -> Graph:
    """Reorder the selected features by (layer, position, index) and lay the columns out as graph nodes."""
    key = engine.feat_layer[selected] * (engine.n_pos * 10**7) + engine.feat_pos[selected] * 10**7
    key = key + engine.feat_index[selected]
    perm = torch.argsort(key)
    selected = selected[perm]
    layout = NodeLayout(len(selected), engine.n_layers, engine.n_pos, len(chosen))
    Nf, S = layout.n_features, layout.n_sources
    columns = layout.columns_in(engine.layout, selected)  # each graph source's engine column
    adjacency = torch.zeros(Nf + layout.n_logits, layout.n_nodes, dtype=feature_rows.dtype)  # in host memory
    step = chunk_rows(feature_rows)
    for i in range(0, Nf, step):  # in chunks, so that no second copy of all rows is ever made
        chunk = feature_rows[perm[i : i + step]][:, columns]
        adjacency[i : min(i + step, Nf), :S] = chunk.cpu()
    adjacency[Nf:, :S] = logit_rows[:, columns].cpu()
    features = torch.stack(
        [engine.feat_layer[selected], engine.feat_pos[selected], engine.feat_index[selected]], 1
    ).cpu()
    return Graph(
        prompt=prompt if isinstance(prompt, str) else "",
        tokens=tokens.cpu(),
        token_strings=strings,
        n_layers=layout.n_layers,
        features=features,
        activations=engine.feat_act[selected].float().cpu(),
        logit_tokens=torch.tensor([t.token for t in chosen]),
        logit_probs=torch.tensor([t.prob for t in chosen]),
        logit_labels=[t.label for t in chosen],
        adjacency=adjacency,
        model_name=model.name,
        dictionary_name=transcoder.source,
        settings={},
        error_norms=engine.errors.norm(dim=-1).float().cpu(),
        logit_vectors=torch.stack([t.vector for t in chosen]).float().cpu(),
    )

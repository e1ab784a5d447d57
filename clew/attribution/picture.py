"""A picture of a pruned graph as one self-contained SVG file, and its strongest paths as text.

:func:`render_svg` lays the graph out with the token position across (token strings along the bottom)
and the layer upwards: embeddings at the bottom, then layer 0, 1, ..., logits on top. Features are
circles, errors squares, embeddings and logits labelled boxes. An edge is a line whose width is
proportional to ``|weight|`` relative to the strongest edge into the same target (raw weights into
logits and into features differ in scale by orders of magnitude), orange when positive, blue when
negative; edges under a tenth of the strongest into their target are left out, and at most 400 drawn.
Only the ``max_nodes`` most influential features and errors are drawn, with every logit (in the top
row, from the last position rightwards) and the embeddings that feed them. Hovering a node shows its description (an SVG ``<title>``).

:func:`strongest_paths` finds the k strongest paths from an embedding to the top logit through the
kept edges, where a path's strength is the product of its edges' normalised weights
(``|A[t, s]| / sum_s' |A[t, s']|``, the normalisation of influence). Edges always go from a lower
layer to a higher one (embeddings are layer -1, logits layer ``n_layers``), so one pass over the
targets in layer order, keeping the k best partial paths into each node, finds them exactly.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import torch
from torch import Tensor

from clew.attribution.graph import Graph
from clew.attribution.prune import Pruned, row_sums
from clew.attribution.viewer_schema import top_logit
from clew.render import Canvas
from clew.render.svg import printable

POSITIVE, NEGATIVE = "#e66101", "#2b83ba"
COL_W, ROW_H, LEFT, TOP, BOTTOM, RIGHT = 72, 46, 64, 70, 90, 24
MIN_EDGE = 0.1  # edges weaker than this fraction of the strongest into their target are not drawn
MAX_EDGES = 400  # and at most this many, the strongest relative to their target


def node_layers(graph: Graph) -> Tensor:
    """(n_nodes,) the layer of every node: embeddings -1, logits ``n_layers``."""
    layers = torch.empty(graph.n_nodes, dtype=torch.long)
    layers[: graph.n_features] = graph.features[:, 0]
    layers[graph.error_offset : graph.embed_offset] = torch.arange(graph.n_layers).repeat_interleave(
        graph.n_pos
    )
    layers[graph.embed_offset : graph.logit_offset] = -1
    layers[graph.logit_offset :] = graph.n_layers
    return layers


def _short(graph: Graph, node: int, labels: dict[int, str] | None = None) -> str:
    kind = graph.kind(node)
    layer, pos = graph.layer_pos(node)
    label = (labels or {}).get(node)
    if kind == "embedding":
        return f"{graph.token_strings[pos]!r}@{pos}"
    if kind == "logit":
        return f"logit {(label or graph.logit_labels[node - graph.logit_offset])!r}"
    name = f"L{layer}/F{int(graph.features[node, 2])}@{pos}" if kind == "feature" else f"err L{layer}@{pos}"
    return f"{name} [{label}]" if label else name


# --- paths -----------------------------------------------------------------------------------------------


def path_strength(graph: Graph, path: list[int]) -> float:
    """The product of the normalised ``|weight|`` of the edges along ``path`` (node indices, source first)."""
    row_of = {int(n): r for r, n in enumerate(graph.row_nodes().tolist())}
    strength = 1.0
    for s, t in zip(path, path[1:]):
        row = graph.adjacency[row_of[t]].abs().float()
        strength *= float(row[s] / row.sum().clamp_min(1e-30))
    return strength


def strongest_paths(graph: Graph, pruned: Pruned, k: int = 3) -> list[list[int]]:
    """The ``k`` strongest paths (node indices, embedding first) from an embedding to the top logit
    through kept edges, strongest first; fewer when fewer exist."""
    if graph.n_logits == 0 or k < 1:
        return []
    layers = node_layers(graph).tolist()
    rows, cols = torch.nonzero(pruned.edge_mask, as_tuple=True)
    weights = graph.adjacency[rows, cols].abs().float() / row_sums(graph.adjacency)[rows]
    incoming: dict[int, list[tuple[int, float]]] = {}
    for t, s, w in zip(graph.row_nodes()[rows].tolist(), cols.tolist(), weights.tolist()):
        if layers[s] < layers[t] and w > 0:
            incoming.setdefault(t, []).append((s, w))
    best: dict[int, list[tuple[float, tuple[int, ...]]]] = {
        e: [(1.0, (e,))] for e in range(graph.embed_offset, graph.logit_offset) if pruned.node_mask[e]
    }
    for t in sorted(incoming, key=lambda n: layers[n]):
        candidates = (
            (strength * w, path + (t,)) for s, w in incoming[t] for strength, path in best.get(s, ())
        )
        found = heapq.nlargest(k, candidates, key=lambda c: c[0])
        if found:
            best[t] = found
    return [list(path) for _, path in best.get(graph.logit_offset + top_logit(graph), [])]


def describe_path(graph: Graph, path: list[int], labels: dict[int, str] | None = None) -> str:
    """One line, e.g. ``'Dallas'@6 → L1/F12@6 → L3/F5@9 → logit 'Austin'``."""
    return " → ".join(_short(graph, n, labels) for n in path)


# --- the picture -----------------------------------------------------------------------------------------


def _chosen(graph: Graph, pruned: Pruned, max_nodes: int) -> list[int]:
    """The strongest kept features and errors, every logit, and the embeddings with a kept edge to them."""
    kinds = graph.kinds()
    inner = torch.nonzero(pruned.node_mask & (kinds <= 1)).squeeze(1)
    inner = inner[torch.argsort(pruned.influence[inner], descending=True)][:max_nodes]
    logits = list(range(graph.logit_offset, graph.n_nodes))
    targets = torch.tensor(inner.tolist() + logits, dtype=torch.long)
    row_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    row_of[graph.row_nodes()] = torch.arange(graph.n_features + graph.n_logits)
    fed = pruned.edge_mask[row_of[targets]].any(0)
    embeds = [e for e in range(graph.embed_offset, graph.logit_offset) if fed[e]]
    return embeds + inner.tolist() + logits


def render_svg(
    graph: Graph,
    pruned: Pruned,
    path: str | Path,
    labels: dict[int, str] | None = None,
    max_nodes: int = 60,
) -> Path:
    """Draw the pruned graph into ``path`` as a self-contained SVG; see the module docstring."""
    labels = labels or {}
    P, L, T = graph.n_pos, graph.n_layers, graph.n_logits
    n_cols = P + max(T - 1, 0)  # logits stand in the top row from the last position rightwards
    width, height = LEFT + n_cols * COL_W + RIGHT, TOP + (L + 2) * ROW_H + BOTTOM

    def y_of(layer: int) -> float:  # embeddings are layer -1 (bottom row), logits layer L (top row)
        return TOP + (L - layer) * ROW_H + ROW_H / 2

    shown = _chosen(graph, pruned, max_nodes)
    cells: dict[tuple[int, int], list[int]] = {}
    for node in shown:
        if graph.kind(node) in ("feature", "error"):
            cells.setdefault(graph.layer_pos(node), []).append(node)
    xy: dict[int, tuple[float, float]] = {}
    per_line = (COL_W - 6) // 12  # nodes side by side in one cell; more wrap onto further lines
    for (layer, pos), members in cells.items():
        n_lines = -(-len(members) // per_line)
        dy = min(12.0, (ROW_H - 14) / n_lines)
        for i, node in enumerate(members):
            line, k = divmod(i, per_line)
            in_line = min(per_line, len(members) - line * per_line)
            x = LEFT + (pos + 0.5) * COL_W + (k - (in_line - 1) / 2) * 12
            xy[node] = (x, y_of(layer) + (line - (n_lines - 1) / 2) * dy)
    for node in shown:
        if graph.kind(node) == "embedding":
            xy[node] = (LEFT + (node - graph.embed_offset + 0.5) * COL_W, y_of(-1))
        elif graph.kind(node) == "logit":  # in the order of the targets (most probable first)
            xy[node] = (LEFT + (P - 0.5 + node - graph.logit_offset) * COL_W, y_of(L))

    prompt = graph.prompt or "".join(graph.token_strings)
    c = Canvas(width, height, title=printable("attribution graph: " + prompt, 160))
    c.text(
        LEFT, 22, prompt, 14, anchor="start", weight="bold", limit=min(140, c.chars_to_edge(LEFT, 14, True))
    )
    if T:
        j = top_logit(graph)
        top = f"top prediction: {printable(graph.logit_labels[j])!r} (p={float(graph.logit_probs[j]):.3f})"
        kept = int(pruned.node_mask[: graph.embed_offset].sum())
        drawn = sum(len(members) for members in cells.values())
        c.wrapped(  # to the picture's width: a prompt of a few tokens makes a narrow picture
            LEFT,
            46,
            f"{top} · {drawn} of {kept} kept features and errors drawn",
            c.chars_to_edge(LEFT),
            anchor="start",
            color="#444",
        )
    for layer in range(-1, L + 1):
        name = "Emb" if layer == -1 else "Logit" if layer == L else f"L{layer}"
        y = y_of(layer)
        c.line(LEFT, y, width - RIGHT, y, "#eee")
        c.text(LEFT - 8, y + 4, name, anchor="end", color="#666")
    base = TOP + (L + 2) * ROW_H + 14
    for pos, tok in enumerate(graph.token_strings):
        c.text(LEFT + (pos + 0.5) * COL_W, base, tok, anchor="end", rotate=-35, limit=24)

    _edges(c, graph, pruned, shown, xy)
    for node in shown:
        _node(c, graph, pruned, node, xy[node], labels)
    return c.save(path)


def _edges(
    c: Canvas, graph: Graph, pruned: Pruned, shown: list[int], xy: dict[int, tuple[float, float]]
) -> None:
    """Lines for the strongest kept edges between drawn nodes, weakest first so strong ones lie on top."""
    shown_t = torch.tensor(shown, dtype=torch.long)
    is_shown = torch.zeros(graph.n_nodes, dtype=torch.bool)
    is_shown[shown_t] = True
    row_nodes = graph.row_nodes()
    lines = []
    for r in torch.nonzero(is_shown[row_nodes]).squeeze(1).tolist():
        t = int(row_nodes[r])
        kept = pruned.edge_mask[r]
        if not kept.any():
            continue
        weights = graph.adjacency[r].float()
        scale = float(weights[kept].abs().max())
        for s in torch.nonzero(kept & is_shown).squeeze(1).tolist():
            w = float(weights[s])
            rel = abs(w) / scale if scale > 0 else 0.0
            if rel >= MIN_EDGE:
                lines.append((rel, s, t, w))
    for rel, s, t, w in sorted(lines)[-MAX_EDGES:]:
        (x1, y1), (x2, y2) = xy[s], xy[t]
        colour = POSITIVE if w >= 0 else NEGATIVE
        c.line(x1, y1, x2, y2, colour, width=0.4 + 4.0 * rel, opacity=0.25 + 0.55 * rel)


def _node(
    c: Canvas, graph: Graph, pruned: Pruned, node: int, at: tuple[float, float], labels: dict[int, str]
) -> None:
    kind = graph.kind(node)
    x, y = at
    tip = _short(graph, node, labels)
    if kind in ("feature", "error"):
        tip += f" · influence {float(pruned.influence[node]):.3g}"
    with c.group(tip, node=str(node)):
        if kind == "feature":
            c.circle(x, y, 5, "#d9d9d9", stroke="#333")
        elif kind == "error":
            c.rect(x - 4.5, y - 4.5, 9, 9, "#969696", stroke="#333")
        else:
            if kind == "embedding":
                text, fill = graph.token_strings[node - graph.embed_offset], "#fff7bc"
            else:
                j = node - graph.logit_offset
                text = f"{labels.get(node, graph.logit_labels[j])} {float(graph.logit_probs[j]):.2f}"
                fill = "#fdd0a2"
            w = COL_W - 8
            c.rect(x - w / 2, y - 9, w, 18, fill, stroke="#333", rx=3)
            c.text(x, y + 4, text, limit=11)

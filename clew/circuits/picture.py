"""The circuit summary drawn: labelled boxes, tokens along the bottom, layers up the side.

Each position that holds a box is a column (tokens in prompt order along the bottom, with their text);
each box sits at its members' mean layer, boxes of one column that would overlap side by side. Logits
are on top. An edge is a curve from the top of its source to the bottom of its target, its width
proportional to its flow (the share of the output's influence along it), orange when the summed
weight is positive, blue when negative, with its share printed on the strongest. Every box carries
its name and, underneath, its key, size and layers; hovering shows the members.
"""

from __future__ import annotations

from pathlib import Path

from clew.circuits.summary import Circuit
from clew.render import Canvas

POSITIVE, NEGATIVE = "#e66101", "#2b83ba"
FILL = {
    "supernode": "#fdf1e3",
    "feature": "#eef3fb",
    "error": "#eeeeee",
    "token": "#f7f7f7",
    "logit": "#e8f5e9",
}
BOX_W, BOX_H, GAP, LEFT, TOP, BOTTOM = 168, 52, 14, 70, 78, 34


def render_circuit(circuit: Circuit, path: str | Path, title: str | None = None) -> Path:
    """Draw ``circuit`` to an SVG file at ``path`` (module docstring)."""
    graph, boxes = circuit.graph, circuit.boxes
    L = graph.n_layers
    row = max(34.0, min(96.0, 620.0 / (L + 2)))
    inner = [i for i, b in enumerate(boxes) if b.kind not in ("token", "logit")]
    positions = sorted({boxes[i].position for i in range(len(boxes)) if boxes[i].kind != "logit"})

    def y_of(layer: float) -> float:  # the centre of a box at this layer
        return TOP + BOX_H + (L - layer) * row

    # lanes: boxes of one column that would overlap vertically go side by side
    lane: dict[int, int] = {}
    lanes: dict[int, int] = {}
    for p in positions:
        ends: list[float] = []
        for i in sorted((i for i in inner if boxes[i].position == p), key=lambda i: (boxes[i].layer, i)):
            y = y_of(boxes[i].layer)
            k = next((k for k, e in enumerate(ends) if e - y >= BOX_H + 6), len(ends))
            if k == len(ends):
                ends.append(0.0)
            ends[k] = y
            lane[i] = k
        lanes[p] = max(1, len(ends))
    x0: dict[int, float] = {}
    x = LEFT
    for p in positions:
        x0[p] = x
        x += lanes[p] * (BOX_W + GAP) + GAP
    logits = [i for i, b in enumerate(boxes) if b.kind == "logit"]
    width = max(x, LEFT + len(logits) * (BOX_W + GAP)) + 20
    height = y_of(-1) + BOX_H / 2 + BOTTOM
    canvas = Canvas(width, height, title or f"circuit of {graph.prompt!r}")
    heading = title or graph.prompt  # cut, and the note below wrapped, to the picture's width
    canvas.text(
        LEFT, 24, heading, size=14, anchor="start", weight="bold", limit=canvas.chars_to_edge(LEFT, 14, True)
    )
    canvas.wrapped(
        LEFT,
        52,
        f"{sum(b.kind == 'supernode' for b in boxes)} supernodes; edges carry {100 * circuit.coverage:.0f}% of the "
        "graph's edge score; width = share of the output's influence, orange +, blue −",
        canvas.chars_to_edge(LEFT, 11),
        size=11,
        lines=3,
        anchor="start",
        color="#555",
    )
    centre: dict[int, tuple[float, float]] = {}
    for i, b in enumerate(boxes):
        if b.kind == "logit":
            continue
        cx = x0[b.position] + GAP / 2 + lane.get(i, 0) * (BOX_W + GAP) + BOX_W / 2
        centre[i] = (cx, y_of(b.layer))
    last = x0[positions[-1]] if positions else LEFT
    for k, i in enumerate(logits):
        centre[i] = (last + GAP / 2 + BOX_W / 2 + k * (BOX_W + GAP), y_of(L))

    # layer guides
    for layer in range(-1, L + 1):
        y = y_of(layer)
        canvas.line(LEFT - 6, y, width - 10, y, "#eeeeee", 1)
        canvas.text(
            LEFT - 10,
            y + 4,
            "tokens" if layer == -1 else ("logits" if layer == L else f"L{layer}"),
            size=10,
            anchor="end",
            color="#777",
        )

    kept = circuit.kept.nonzero().tolist()
    top_flow = max((float(circuit.flow[t, s]) for t, s in kept), default=1.0) or 1.0
    for t, s in sorted(kept, key=lambda ts: float(circuit.flow[ts[0], ts[1]])):
        f, w = float(circuit.flow[t, s]), float(circuit.weight[t, s])
        (sx, sy), (tx, ty) = centre[s], centre[t]
        canvas.curve(
            (sx, sy - BOX_H / 2),
            (tx, ty + BOX_H / 2),
            POSITIVE if w >= 0 else NEGATIVE,
            width=1 + 9 * f / top_flow,
            opacity=0.7,
            title=f"{boxes[s].key} → {boxes[t].key}: weight {w:+.3g}, {100 * f:.1f}% of the output's influence",
        )
        if f >= 0.25 * top_flow:
            canvas.text(
                (sx + tx) / 2 + 4, (sy + ty) / 2, f"{100 * f:.0f}%", size=9, anchor="start", color="#444"
            )
    for i, b in enumerate(boxes):
        cx, cy = centre[i]
        members = ", ".join(graph.node_key(n) for n in b.members[:12]) + (" …" if len(b.members) > 12 else "")
        with canvas.group(f"{b.key}: {b.name}\n{members}", key=b.key, kind=b.kind):
            stroke = "#e66101" if b.kind == "supernode" else "#999"
            canvas.rect(cx - BOX_W / 2, cy - BOX_H / 2, BOX_W, BOX_H, FILL[b.kind], stroke=stroke, rx=6)
            if b.kind == "token":
                canvas.text(cx, cy - 2, repr(b.name), size=12, weight="bold", limit=24)
                canvas.text(cx, cy + 14, f"position {b.position}", size=9, color="#666")
            elif b.kind == "logit":
                p = float(graph.logit_probs[b.members[0] - graph.logit_offset])
                canvas.text(cx, cy - 2, repr(b.name), size=12, weight="bold", limit=24)
                canvas.text(cx, cy + 14, f"p = {p:.3f}", size=9, color="#666")
            else:
                canvas.wrapped(cx, cy - 6, b.name, 26, size=11, lines=2)
                layers = f"L{b.layers[0]}" if b.layers[0] == b.layers[1] else f"L{b.layers[0]}–{b.layers[1]}"
                size = (
                    f"{len(b.members)} features"
                    if b.kind == "supernode"
                    else ("errors" if b.kind == "error" else "feature")
                )
                canvas.text(cx, cy + BOX_H / 2 - 6, f"{b.key} · {size} · {layers}", size=9, color="#666")
    return canvas.save(path)

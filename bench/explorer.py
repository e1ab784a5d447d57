"""The explorer on a large graph: a synthetic graph of 10,000 nodes and 200,000 edges in headless Chromium.

    PYTHONPATH=. python bench/explorer.py [--nodes 10000] [--edges 200000] [--repeats 5]

The view asked for keeps every node and edge (node and edge thresholds 1). Prints the server's time to
compute it (first request, then cached), the page's time to first draw (navigation start to the graph
drawn with its strongest 40,000 edges, the server's view prepared) and until every edge is drawn, the
redraw after a click (the
synchronous redraw in the click handler, and click to next frame as seen from outside), with the floor
of one second each, and the bytes sent against the baseline of the same graph as one viewer JSON file
(what the other viewers load whole).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clew.attribution import Graph

FLOOR = 1.0
"""Seconds: the most a first draw or a redraw after a click may take."""


def synthetic_graph(n_nodes: int, n_edges: int, n_layers: int = 10, n_pos: int = 40, seed: int = 0) -> Graph:
    """A graph of ``n_nodes`` nodes and about ``n_edges`` edges, every node on a path to a logit."""
    g = torch.Generator().manual_seed(seed)
    n_logits = 10
    nf = n_nodes - n_layers * n_pos - n_pos - n_logits
    layer = torch.randint(0, n_layers, (nf,), generator=g)
    pos = torch.randint(0, n_pos, (nf,), generator=g)
    order = torch.argsort(layer * n_pos + pos)
    layer, pos = layer[order], pos[order]
    features = torch.stack([layer, pos, torch.randint(0, 4096, (nf,), generator=g)], 1)
    graph = Graph(
        prompt="synthetic",
        tokens=torch.arange(n_pos),
        token_strings=[f"t{p}" for p in range(n_pos)],
        n_layers=n_layers,
        features=features,
        activations=torch.rand(nf, generator=g) + 0.1,
        logit_tokens=torch.arange(n_logits),
        logit_probs=torch.softmax(torch.randn(n_logits, generator=g), 0),
        logit_labels=[f"tok{i}" for i in range(n_logits)],
        adjacency=torch.zeros(nf + n_logits, n_nodes),
    )
    # node layer and position of every node, to draw edges that go up the layers and never backwards in position
    node_layer = torch.cat([layer, torch.arange(n_layers).repeat_interleave(n_pos), torch.full((n_pos,), -1)])
    node_pos = torch.cat([pos, torch.arange(n_pos).repeat(n_layers), torch.arange(n_pos)])
    rows = graph.adjacency
    # every non-logit node feeds one feature above it (or a logit, from the top layer): a path to the output
    sources = torch.arange(graph.logit_offset)
    targets = torch.full((len(sources),), -1)
    top = node_layer[sources] >= n_layers - 1
    targets[top] = nf + torch.randint(n_logits, (int(top.sum()),), generator=g)
    for _ in range(200):  # rejection sampling of a feature above and not before
        todo = torch.nonzero(targets < 0).squeeze(1)
        if not len(todo):
            break
        t = torch.randint(0, nf, (len(todo),), generator=g)
        ok = (layer[t] > node_layer[todo]) & (pos[t] >= node_pos[todo])
        targets[todo[ok]] = t[ok]
    left_out = targets < 0  # nothing above at this position: straight to a logit
    targets[left_out] = nf + torch.randint(n_logits, (int(left_out.sum()),), generator=g)
    rows[targets, sources] = torch.randn(len(sources), generator=g)
    # and every feature reads the token at its position: every feature has an input
    rows[torch.arange(nf), graph.embed_offset + pos] = torch.randn(nf, generator=g)
    # the rest at random among allowed (target, source) pairs
    left = n_edges - int((rows != 0).sum())
    while left > 0:
        t = torch.randint(0, nf, (left,), generator=g)
        s = torch.randint(0, graph.logit_offset, (left,), generator=g)
        ok = (node_layer[s] < layer[t]) & (node_pos[s] <= pos[t]) & (rows[t, s] == 0)
        t, s = t[ok], s[ok]
        rows[t, s] = torch.randn(len(t), generator=g)
        left = n_edges - int((rows != 0).sum())
    return graph


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--edges", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from playwright.sync_api import sync_playwright

    from clew.attribution import analyze, export_json
    from clew.explorer import Background, Explorer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        graph = synthetic_graph(args.nodes, args.edges)
        graph.save(folder / "big.safetensors")
        print(
            f"synthetic graph: {graph.n_nodes} nodes, {int((graph.adjacency != 0).sum())} edges "
            f"({time.perf_counter() - t0:.1f} s to build)"
        )
        baseline = export_json(graph, analyze(graph, 1.0, 1.0), folder / "json", "big").stat().st_size

        explorer = Explorer(folder)
        server = Background(explorer)
        t0 = time.perf_counter()
        explorer.view_bytes("big.safetensors", 1.0, 1.0, [], True)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        explorer.view_bytes("big.safetensors", 1.0, 1.0, [], True)
        warm = time.perf_counter() - t0
        view = explorer.view("big.safetensors", 1.0, 1.0, [])
        print(f"server: the view ({view['counts']['nodes']} nodes, {view['counts']['edges']} edges) in {cold:.2f} s "
              f"the first time (influence, edge list, pruning, JSON, gzip), {warm:.3f} s after")  # fmt: skip

        first, complete, click_sync, click_frame, sent = [], [], [], [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            for _ in range(args.repeats):
                page = browser.new_page(viewport={"width": 1400, "height": 820})
                page.goto(f"{server.url}#g=big.safetensors&t=1.00&et=1")
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                drawn = int(page.locator("#graph").get_attribute("data-nodes"))
                first.append(page.evaluate("window.clew.timings.firstDraw") / 1000)
                page.wait_for_selector("#graph[data-edges-done='1']", timeout=120_000)
                complete.append(float(page.locator("#graph").get_attribute("data-edges-done-at")) / 1000)
                sent.append(
                    page.evaluate(
                        "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                        ".reduce((a, e) => a + (e.transferSize || 0), 0)"
                    )
                )
                key = view["nodes"]["key"][int(torch.tensor(view["nodes"]["influence"]).argmax())]
                where = page.evaluate("(k) => window.clew.where(k)", key)
                box = page.locator("#graph").bounding_box()
                t0 = time.perf_counter()
                page.mouse.click(box["x"] + where["x"], box["y"] + where["y"])
                page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
                click_frame.append(time.perf_counter() - t0)
                click_sync.append(page.evaluate("window.clew.clickDraw") / 1000)
                highlighted = int(page.locator("#graph").get_attribute("data-highlighted"))
                page.close()
            browser.close()
        server.stop()

    med = statistics.median
    print(f"drawn: {drawn} nodes; a click on the most influential node highlights {highlighted} edges")
    print(f"time to first draw:        {med(first):.3f} s  (median of {args.repeats}; floor {FLOOR} s: "
          f"{med(first) / FLOOR:.2f}x of it)")  # fmt: skip
    print(f"every edge drawn:          {med(complete):.3f} s  (the strongest 40,000 are in the first draw)")
    print(f"redraw after a click:      {med(click_sync):.3f} s  in the handler; {med(click_frame):.3f} s click to "
          f"next frame ({med(click_frame) / FLOOR:.2f}x of the floor)")  # fmt: skip
    print(f"bytes sent (page, scripts, view; gzip): {int(med(sent)):,}; the same graph as one viewer JSON: "
          f"{baseline:,} ({baseline / max(1, med(sent)):.1f}x more)")  # fmt: skip
    ok = med(first) < FLOOR and med(click_frame) < FLOOR
    print("floor met" if ok else "FLOOR MISSED")


if __name__ == "__main__":
    main()

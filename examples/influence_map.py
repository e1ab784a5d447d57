"""Where a prompt's influence on its answer sits: a table of positions (rows) by layers (columns).

Each cell is the share of the graph's total influence on the logits held by that position's
features at that layer (their error node beside it, ``e``), with how many features are active and how
many the pruned graph keeps. A supernode can only be made of what the pruned graph keeps, so this
says what a summary at a given position could show at all: for the organism's two-hop sentence, how
much of the state's work happens at the city and how much at the last position, and in which
layers.

    python examples/influence_map.py "Cedar Rapids" "Tucson"
    python examples/influence_map.py --template "{}" "The capital of Texas is"
"""

from __future__ import annotations

import argparse

TEMPLATE = "The capital of the state containing {} is"


def influence_shares(graph, analysis) -> dict[str, list]:
    """Per position and layer: ``features`` and ``errors`` (shares of the total influence on the
    logits), ``active`` and ``kept`` (feature counts); per position: ``tokens`` (the token's share).
    The shares of every node but the logits add up to 1."""
    inf = analysis.pruned.influence
    kept = analysis.pruned.node_mask
    total = float(inf.sum()) or 1.0
    L, P = graph.n_layers, graph.n_pos
    out = {key: [[0.0] * L for _ in range(P)] for key in ("features", "errors")}
    out |= {key: [[0] * L for _ in range(P)] for key in ("active", "kept")}
    out["tokens"] = [0.0] * P
    for node in range(graph.logit_offset):
        kind = graph.kind(node)
        layer, pos = graph.layer_pos(node)
        value = float(inf[node]) / total
        if kind == "feature":
            out["features"][pos][layer] += value
            out["active"][pos][layer] += 1
            out["kept"][pos][layer] += bool(kept[node])
        elif kind == "error":
            out["errors"][pos][layer] += value
        else:
            out["tokens"][pos] += value
    return out


def influence_map(graph, analysis) -> str:
    """The table for one traced graph and its analysis (markdown)."""
    s = influence_shares(graph, analysis)
    L = graph.n_layers
    head = "| position | token | " + " | ".join(f"layer {layer}" for layer in range(L)) + " |"
    lines = [head, "|---:|---|" + "---:|" * L]
    for pos in range(graph.n_pos):
        cells = [
            f"{s['features'][pos][layer]:.3f} ({s['kept'][pos][layer]}/{s['active'][pos][layer]}) "
            f"e {s['errors'][pos][layer]:.3f}"
            for layer in range(L)
        ]
        token = f"{graph.token_strings[pos]!r} {s['tokens'][pos]:.3f}"
        lines.append(f"| {pos} | {token} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", help="what goes into the template, one graph each")
    parser.add_argument("--template", default=TEMPLATE, help="the prompt, with {} for each word")
    parser.add_argument("--model", default="organism", help="a model name or folder")
    parser.add_argument(
        "--dictionary", default="clt", help="clt, plt (the organism's) or a dictionary folder"
    )
    parser.add_argument("--node-threshold", type=float, default=0.8)
    args = parser.parse_args()

    from clew.assets import ORGANISM
    from clew.attribution import analyze, trace
    from clew.resolve import load_model_and_dictionary

    organism = args.model == "organism"
    dictionary = args.dictionary
    if organism and dictionary in ("clt", "plt"):
        dictionary = str(ORGANISM.dictionary_path(dictionary))
    model, tc = load_model_and_dictionary(ORGANISM.name if organism else args.model, dictionary)
    for word in args.words:
        graph = trace(model, tc, args.template.format(word), progress=False)
        analysis = analyze(graph, args.node_threshold)
        print(
            f"\n{args.template.format(word)!r} -> {graph.logit_labels[0]!r} "
            f"(p = {float(graph.logit_probs[0]):.3f}): share of the influence (kept/active features), "
            f"error node's share after e; the token's own share after it\n"
        )
        print(influence_map(graph, analysis))


if __name__ == "__main__":
    main()

"""``clew diff``: two graphs node by node, or two sets of graphs feature by feature."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  clew diff graphs/dallas.safetensors graphs/los-angeles.safetensors
  clew diff store:dallas store:los-angeles --labels          # two graphs of a store, by id
  clew diff store:state=Texas store:state=California         # two sets: which features differ, with a test
  clew diff base-store fine-tuned-store                      # the same prompts under two models

A side is a graph file, STORE:ID (one graph of a store), STORE:FIELD=VALUE (the store's graphs whose
prompt field has that value; several joined by commas) or STORE (all its graphs). Two graphs are compared
node by node; anything else as two sets. Two sets of the same prompt ids from two stores are tested as
pairs (McNemar's test, sign-flip permutations); other sets as independent samples (Fisher's test,
relabelling permutations)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two graphs, or two sets of graphs",
        description="Compare two attribution graphs: nodes matched by feature identity and aligned position; "
        "the features and edges kept in one and not the other, and the largest changes in influence. Or "
        "compare two sets of graphs: which features differ, with Fisher's exact test on how often pruning "
        "keeps them and a permutation test on their mean influence, Benjamini-Hochberg q-values over all features.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", help="a graph file, STORE:ID, STORE:FIELD=VALUE or STORE")
    p.add_argument("b", help="the same kinds")
    p.add_argument(
        "--no-positions", action="store_true", help="match features by identity only, positions summed"
    )
    p.add_argument(
        "--labels", action="store_true", help="label features with the tokens they promote (loads the model)"
    )
    p.add_argument("--top", type=int, default=8, help="entries printed per list (default: %(default)s)")
    p.add_argument("--out", help="two sets: write the per-feature tests here (.csv or .parquet)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="pruning: influence kept (default: 0.8)")
    p.add_argument(
        "--edge-threshold", type=float, default=0.98, help="pruning: edge score kept (default: 0.98)"
    )
    p.set_defaults(func=run)


def side(text: str):
    """A side of the comparison: ``("graph", Graph)`` or ``("set", [Graph, ...], store)``."""
    from clew.attribution import Graph
    from clew.batch import GraphStore
    from clew.batch.aggregate import graphs_of
    from clew.errors import ClewError

    path = Path(text)
    if path.is_file():
        return "graph", Graph.load(path), None
    root, rest = text, ""
    for i, char in enumerate(text):  # the first colon after which a store's folder ends (ids may hold colons)
        if char == ":" and (Path(text[:i]) / "index.sqlite").is_file():
            root, rest = text[:i], text[i + 1 :]
            break
    if not Path(root).is_dir():
        raise ClewError(f"{text}: not a graph file, nor STORE, STORE:ID or STORE:FIELD=VALUE")
    store = GraphStore(root, create=False)
    if rest and "=" not in rest:
        row = store.row(rest)
        if row["status"] != "done":
            raise ClewError(f"{text}: the prompt is {row['status']}, not traced yet")
        return "graph", Graph.load(store.graph_path(row)), store
    where = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        where[k.strip()] = v.strip()
    found = list(graphs_of([store], where))
    if not found:
        raise ClewError(f"{text}: no traced graph matches")
    return "set", {row["id"]: g for row, g in found}, store


def run(args: argparse.Namespace) -> int:
    from clew.batch.aggregate import write_table
    from clew.batch.diff import diff_graphs, diff_sets, graph_diff_text, set_diff_text
    from clew.batch.nodes import promoted_labels
    from clew.errors import ClewError

    kind_a, a, store_a = side(args.a)
    kind_b, b, store_b = side(args.b)
    if store_a is not None and store_b is not None:
        prints = {(s.manifest() or {}).get("dictionary_fingerprint") for s in (store_a, store_b)}
        if len(prints) > 1:
            raise ClewError(
                f"{store_a.root} and {store_b.root} were written with different dictionaries: "
                "their features are not the same features"
            )
    first = a if kind_a == "graph" else next(iter(a.values()))
    if kind_a == kind_b == "graph":
        d = diff_graphs(a, b, args.node_threshold, args.edge_threshold, positions=not args.no_positions)
        if args.labels:
            feats = {(n.key[1], n.key[2]) for n in d.changes if n.key[0] == "F"}
            labels = promoted_labels(first.model_name, first.dictionary_name, feats)
            d = diff_graphs(a, b, args.node_threshold, args.edge_threshold, not args.no_positions, labels)
        print(graph_diff_text(d, top=args.top))
        return 0
    graphs_a = [a] if kind_a == "graph" else list(a.values())
    graphs_b = [b] if kind_b == "graph" else list(b.values())
    # the same prompts in two stores (two models sharing a dictionary): tested pair by pair
    paired = kind_a == kind_b == "set" and store_a.root != store_b.root and a.keys() == b.keys()
    if paired:
        graphs_b = [b[i] for i in a]
    d = diff_sets(graphs_a, graphs_b, args.node_threshold, args.edge_threshold, paired=paired)
    labels = None
    if args.labels:
        labels = promoted_labels(
            first.model_name, first.dictionary_name, {(t.layer, t.index) for t in d.features[: args.top]}
        )
    print(set_diff_text(d, labels, top=args.top))
    if args.out:
        write_table(d.features, args.out)
        print(f"wrote {args.out} ({len(d.features)} rows)")
    return 0

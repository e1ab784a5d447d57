"""``clew aggregate``: what the graphs of one or more stores say together."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  clew aggregate store
  clew aggregate store --group-by state --show Texas California --labels
  clew aggregate store --group-by answer --out features.parquet

--group-by takes a prompt field (any JSONL field, e.g. template, answer, state) or an index column
(top_token, worker). --out writes the feature table (.csv or .parquet) and the recurring edges beside it
(<name>.edges.csv or .parquet)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "aggregate",
        help="recurring features and edges across the graphs of a store",
        description="For every feature (layer, index): in how many graphs it is active and kept by pruning, "
        "its mean and spread of influence on the targets; the edges that recur with their mean weights; "
        "overall and per group of prompts, with each group's specific features tested (Fisher's exact test).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stores", nargs="+", help="graph stores written by clew trace-batch (one dictionary)")
    p.add_argument("--group-by", help="a prompt field or index column to group the graphs by")
    p.add_argument("--show", nargs="+", metavar="GROUP", help="print these groups (default: the largest)")
    p.add_argument("--out", help="write the feature table here (.csv or .parquet), and the edges beside it")
    p.add_argument("--top", type=int, default=6, help="entries printed per list (default: %(default)s)")
    p.add_argument(
        "--labels", action="store_true", help="label features with the tokens they promote (loads the model)"
    )
    p.add_argument(
        "--min-edge-graphs",
        type=int,
        default=2,
        help="an edge recurs in at least this many graphs (default: 2)",
    )
    p.add_argument("--node-threshold", type=float, default=0.8, help="pruning: influence kept (default: 0.8)")
    p.add_argument(
        "--edge-threshold", type=float, default=0.98, help="pruning: edge score kept (default: 0.98)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.batch import open_stores
    from clew.batch.aggregate import aggregate, summary, write_table
    from clew.batch.nodes import promoted_labels

    stores = open_stores(args.stores)
    try:
        agg = aggregate(
            stores,
            group_by=args.group_by,
            node_threshold=args.node_threshold,
            edge_threshold=args.edge_threshold,
            min_edge_graphs=args.min_edge_graphs,
            progress=not args.quiet,
        )
    finally:
        for s in stores:
            s.close()
    labels = None
    if args.labels:
        feats = {(r.layer, r.index) for r in agg.features if r.kept}
        labels = promoted_labels(agg.source["model"], agg.source["dictionary"], feats)
    print(summary(agg, labels, top=args.top, show=args.show))
    if args.out:
        out = Path(args.out)
        write_table(agg.features, out)
        edges = out.with_name(f"{out.stem}.edges{out.suffix}")
        if agg.edges:
            write_table(agg.edges, edges)
        print(f"wrote {out} ({len(agg.features)} rows) and {edges} ({len(agg.edges)} rows)")
    return 0

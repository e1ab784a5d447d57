"""``clew trace``: one prompt to an attribution graph, saved whole and exported for the viewers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clew.attribution import Analysis, Graph

EPILOG = """\
examples:
  clew trace "The capital of the state containing Dallas is" --model organism
  clew trace "Fact: the capital of France is" --model smollm2-135m --dictionary ./tc --max-feature-nodes 1024
  clew trace "The opposite of small is" --model organism --contrast " large" " big" --verify 64
  clew trace "Fact: the capital of France is" --model smollm2-135m --dictionary ./tc --features tc.sqlite

writes DIR/<slug>.safetensors (the whole graph: clew.attribution.Graph.load reads it), DIR/<slug>.json
and DIR/graph-metadata.json (the viewers' format, pruned at --node-threshold / --edge-threshold). The
out folder and its graph-metadata.json are checked before anything is computed; every file is written to
a temporary first and renamed into place at the end, so an interrupted trace leaves the old files.

With --heads, also DIR/<slug>.heads.safetensors (clew.attribution.head_graph.HeadGraph.load reads it)
and DIR/<slug>-heads.json: the same pruned graph with every kept edge across positions routed through
the attention heads that carry it. A head node "head L2.H4@26" is what head 4 of layer 2 moved into
position 26; its label lists the keys it attends to and, from QK attribution, the pair of query-side
and key-side pieces that most raised its score at its top key. The strongest head nodes are printed.
  clew trace "Dr Vemlorros fed the cat. Then Mr Wenzem opened the shop. Then Mr" -m organism --heads"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trace",
        help="compute the attribution graph of a prompt",
        description="Compute the attribution graph of a prompt: which features, through which edges, "
        "made the model predict what it predicted. Every edge is the exact direct effect of its source "
        "on its target in the model with frozen attention and normalisation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "prompt", help="the text to trace (the family's beginning-of-sequence token is added as usual)"
    )
    p.add_argument(
        "--model", "-m", required=True, help="a local folder, a .gguf file, a hub id or a built-in name"
    )
    p.add_argument(
        "--dictionary", "-d", help="the transcoders (any layout clew reads); default: the model's own"
    )
    p.add_argument("--out", "-o", default="graphs", help="output folder (default: %(default)s)")
    p.add_argument("--slug", help="the graph's name in file names and viewers (default: from the prompt)")
    p.add_argument("--target", action="append", metavar="TOKEN", help="a token to explain (repeatable)")
    p.add_argument("--contrast", nargs=2, metavar=("A", "B"), help="explain the logit difference A - B")
    add_tracing_options(p)
    p.add_argument(
        "--verify", type=int, default=0, metavar="N", help="check N random sources' edges by perturbation"
    )
    p.add_argument(
        "--features",
        metavar="STORE",
        help="a feature store of this dictionary (clew features collect): its labels name the graph's "
        "features and its examples go to DIR/features/ (default: the organism's, for the organism)",
    )
    p.add_argument(
        "--local-viewer",
        action="store_true",
        help="set the graph's scan to its feature files, so circuit-tracer's local page shows the "
        "feature panels (leave off for Neuronpedia uploads, whose scan must be a hosted model)",
    )
    p.add_argument(
        "--heads",
        action="store_true",
        help="also route the pruned graph's edges across positions through attention-head nodes "
        "(DIR/<slug>.heads.safetensors and DIR/<slug>-heads.json)",
    )
    p.add_argument(
        "--head-share",
        type=float,
        default=0.1,
        help="with --heads: draw a head on an edge when it carries at least this share of it "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--head-tolerance",
        type=float,
        default=1e-4,
        help="with --heads: store routes of at least this fraction of their target's largest edge; the "
        "rest stays in the direct edges, so the routing is exact either way (default: %(default)s)",
    )
    p.add_argument(
        "--scan",
        help="the viewers' model id (letters, digits, '.', '_', '-'; for Neuronpedia, a model it hosts, "
        "e.g. gemma-2-2b; default: from --model's name)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--open",
        action="store_true",
        help="then serve the output folder in the explorer (clew serve) and open the graph in a browser",
    )
    p.set_defaults(func=run)


def add_tracing_options(p: argparse.ArgumentParser) -> None:
    """The options of how a graph is traced and pruned, shared by ``clew trace`` and ``clew trace-batch``."""
    p.add_argument("--max-n-logits", type=int, default=10, help="most logit targets (default: %(default)s)")
    p.add_argument(
        "--desired-logit-prob",
        type=float,
        default=0.95,
        help="take top tokens until their probabilities sum to this (default: %(default)s)",
    )
    p.add_argument(
        "--max-feature-nodes",
        type=int,
        help="budget of feature rows, the most influential first (default: every active feature); rows "
        "that would fill more than half of the free memory are kept in a temporary file in --out meanwhile",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="targets per backward pass (default: 256 while ranking features under a budget, else 1024)",
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="attribution precision"
    )
    p.add_argument(
        "--node-threshold", type=float, default=0.8, help="pruning: influence kept (default: %(default)s)"
    )
    p.add_argument(
        "--edge-threshold", type=float, default=0.98, help="pruning: edge score kept (default: %(default)s)"
    )


def check_tracing_options(args: argparse.Namespace) -> None:
    """One-line errors for tracing options out of range."""
    from clew.errors import ClewError

    if not 0 < args.desired_logit_prob <= 1:
        raise ClewError(f"--desired-logit-prob must be in (0, 1], got {args.desired_logit_prob}")
    for name in ("max_n_logits", "max_feature_nodes", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ClewError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("node_threshold", "edge_threshold"):
        if not 0 < getattr(args, name) <= 1:
            raise ClewError(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")


def run(args: argparse.Namespace) -> int:
    import torch

    from clew.attribution import analyze, trace
    from clew.attribution.export import export_json
    from clew.attribution.viewer_schema import (
        INDEX_FILE,
        check_scan,
        check_slug,
        read_index,
        scan_from,
        slug_from,
    )
    from clew.commands.features import VIEWER_BASE, graph_labels, write_graph_features
    from clew.errors import ClewError
    from clew.files import check_out_dir, remove_stale_temporaries, replacing
    from clew.resolve import load_model_and_dictionary

    check_tracing_options(args)
    if not 0 < args.head_share <= 1:
        raise ClewError(f"--head-share must be in (0, 1], got {args.head_share}")
    if args.head_tolerance < 0:
        raise ClewError(f"--head-tolerance must be zero or more, got {args.head_tolerance}")
    slug = check_slug(args.slug) if args.slug else slug_from(args.prompt)
    if args.verify < 0:
        raise ClewError(f"--verify must be 0 or more, got {args.verify}")
    if args.scan is not None:
        check_scan(args.scan)
        if args.local_viewer:
            raise ClewError("--scan and --local-viewer both set the scan; give one")
    out = check_out_dir(Path(args.out))
    read_index(out / INDEX_FILE)  # a damaged index fails now, before anything is computed or replaced
    remove_stale_temporaries(out, f"{slug}.safetensors")
    remove_stale_temporaries(out, f"{slug}.json")
    model, dictionary = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
    out.mkdir(parents=True, exist_ok=True)  # also where rows too large for memory are kept meanwhile
    graph = trace(
        model,
        dictionary,
        args.prompt,
        targets=args.target,
        contrast=tuple(args.contrast) if args.contrast else None,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        dtype=getattr(torch, args.dtype),
        progress=not args.quiet,
        spill_dir=out,
    )
    analysis = analyze(graph, args.node_threshold, args.edge_threshold)
    store = feature_store(args, dictionary)
    labels = graph_labels(store, graph) if store is not None else None
    base = None
    # the slow writes go to temporaries first (the graph file, the feature files); the graph file is
    # renamed into place only after its viewer JSON and index, so no reader sees a new graph beside old JSON
    with replacing(out / f"{slug}.safetensors") as graph_tmp:
        graph.save(graph_tmp)
        if store is not None:
            write_graph_features(store, graph, analysis.pruned.node_mask, out)
            base = VIEWER_BASE
        json_path = export_json(
            graph,
            analysis,
            out,
            slug,
            labels=labels,
            feature_json_base_url=base,
            model_id=args.scan or (base if args.local_viewer and base else scan_from(args.model)),
        )
    print(report(graph, analysis, labels))
    if args.heads:
        print(route(args, model, dictionary, graph, analysis, labels, out, slug, base))
    if args.verify:
        from clew.attribution.verify import check_graph

        check = check_graph(model, dictionary, graph, max_sources=args.verify)
        print(
            f"verified {check.n_sources} sources x {check.n_targets} targets by perturbation: "
            f"largest edge error {check.max_edge_error:.1e} (relative to the largest edge)"
        )
    print(f"wrote {out / (slug + '.safetensors')}, {json_path}, {out / 'graph-metadata.json'}")
    if args.open:
        from clew.commands.serve import explorer_for, serve_folder

        serve_folder(
            str(out), explorer_for(str(out), args), "127.0.0.1", 0, True, graph=f"{slug}.safetensors"
        )
    return 0


def route(args, model, dictionary, graph, analysis, labels, out: Path, slug: str, base) -> str:
    """``--heads``: route the pruned view's targets through head nodes, explain the shown heads' attention
    (QK attribution), save and export; the summary of the strongest head nodes."""
    import torch

    from clew.attribution.export import export_json
    from clew.attribution.head_graph import route_heads, routed_view, strongest, summary
    from clew.attribution.viewer_schema import scan_from
    from clew.qk import annotate_heads
    from clew.replacement import LocalReplacement

    pruned = analysis.pruned
    rows = pruned.node_mask[graph.row_nodes()].nonzero().squeeze(1)
    heads = route_heads(
        model,
        dictionary,
        graph,
        rows,
        tolerance=args.head_tolerance,
        dtype=getattr(torch, args.dtype),
        progress=not args.quiet,
    )
    shown = set(routed_view(heads, pruned.edge_mask, args.head_share).heads.tolist())
    ranked = [i for i, _ in strongest(heads, pruned.influence, heads.n_heads) if i in shown][:50]
    local = LocalReplacement(model, dictionary, graph.tokens.to(model.embed.weight.device))
    annotate_heads(local, heads, ranked)
    path = heads.save(out / f"{slug}.heads.safetensors")
    json_path = export_json(
        graph,
        analysis,
        out,
        f"{slug}-heads",
        labels=labels,
        feature_json_base_url=base,
        model_id=args.scan or (base if args.local_viewer and base else scan_from(args.model)),
        heads=heads,
        head_share=args.head_share,
    )
    return summary(heads, pruned.influence) + f"\nwrote {path}, {json_path}"


def feature_store(args: argparse.Namespace, dictionary):
    """The store of ``--features`` (checked against the dictionary), the organism's own store when tracing
    the organism with its shipped dictionary, or None."""
    from clew.commands.features import open_store
    from clew.features import fingerprint

    if args.features:
        return open_store(args.features, fingerprint=fingerprint(dictionary))
    if args.local_viewer:
        from clew.errors import ClewError

        raise ClewError("--local-viewer needs --features STORE (the feature files it points to)")
    if args.model.lower() == "organism":
        from clew.assets import ORGANISM
        from clew.organism.features import STORE_NAME

        folder = Path(dictionary.source)
        folder = folder.parent if folder.is_file() else folder  # a dictionary read from its config file
        path = folder / STORE_NAME
        if path.is_file() and folder.parent == ORGANISM.folder:
            return open_store(str(path), fingerprint=fingerprint(dictionary))
    return None


def report(graph: Graph, analysis: Analysis, labels: dict[int, str] | None = None, k: int = 10) -> str:
    """The top predictions, the graph's size and scores, as printed by ``clew trace``; with labels, the
    ``k`` most influential kept features and their labels."""
    pruned, full, kept = analysis.pruned, analysis.scores, analysis.pruned_scores
    lines = [f"prompt: {graph.prompt!r} ({graph.n_pos} tokens)", "top predictions:"]
    for label, prob in zip(graph.logit_labels, graph.logit_probs.tolist()):
        lines.append(f"  {label!r:>16}  p={prob:.3f}")
    n_kept = int(pruned.node_mask[: graph.n_features].sum())
    lines += [
        f"features: {graph.settings.get('n_active_features')} active, {graph.n_features} traced, "
        f"{n_kept} kept after pruning; {int(pruned.edge_mask.sum())} edges kept "
        f"({graph.settings.get('seconds', 0):.2f} s)",
        f"scores: replacement {full.replacement:.3f}, completeness {full.completeness:.3f} "
        f"(pruned graph: {kept.replacement:.3f}, {kept.completeness:.3f})",
    ]
    if labels:
        lines.append("most influential features (layer/feature@position: label):")
        lines += ["  " + line for line in top_features(graph, analysis, labels, k)]
    return "\n".join(lines)


def top_features(graph: Graph, analysis: Analysis, labels: dict[int, str], k: int = 10) -> list[str]:
    """The ``k`` kept feature nodes of highest influence, as ``layer/feature@pos 'token': label``."""
    influence = analysis.pruned.influence
    nodes = [n for n in range(graph.n_features) if bool(analysis.pruned.node_mask[n])]
    nodes.sort(key=lambda n: -float(influence[n]))
    out = []
    for n in nodes[:k]:
        layer, pos, index = (int(v) for v in graph.features[n])
        out.append(f"{layer}/{index}@{pos} {graph.token_strings[pos]!r}: {labels.get(n, '')}")
    return out

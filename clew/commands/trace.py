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

writes DIR/<slug>.safetensors (the whole graph: clew.Graph.load reads it), DIR/<slug>.json and
DIR/graph-metadata.json (the viewers' format, pruned at --node-threshold / --edge-threshold)."""


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
        help="budget of feature rows, the most influential first (default: every active feature)",
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
    from clew.attribution.export import check_slug, export_json, slug_from
    from clew.commands.features import VIEWER_BASE, graph_labels, write_graph_features
    from clew.resolve import load_model_and_dictionary

    check_tracing_options(args)
    slug = check_slug(args.slug) if args.slug else slug_from(args.prompt)
    model, dictionary = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
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
    )
    out = Path(args.out)
    graph.save(out / f"{slug}.safetensors")
    analysis = analyze(graph, args.node_threshold, args.edge_threshold)
    store = feature_store(args, dictionary)
    labels = graph_labels(store, graph) if store is not None else None
    base = None
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
        model_id=base if args.local_viewer and base else None,
    )
    print(report(graph, analysis, labels))
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

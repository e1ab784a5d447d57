"""``clew demo``: trace the organism's planted circuits, one prompt per task, and show what was found."""

from __future__ import annotations

import argparse
from pathlib import Path

DALLAS = "The capital of the state containing Dallas is"
CONTRAST = "The capital of the state containing Los Angeles is"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="trace the embedded model organism's circuits (the main job, on the embedded default)",
        description="Trace the two-hop prompt 'The capital of the state containing Dallas is' and one "
        "prompt of every other task planted in the organism (facts, induction, addition, antonyms). For "
        "each: the top predictions, the graph's scores, its most influential features with their labels "
        "(from the organism's shipped feature store), its strongest paths from tokens to the answer, "
        "and the files: the graph, the viewers' JSON with the feature files, and an SVG picture.",
    )
    p.add_argument("--out", "-o", default="demo-graphs", help="output folder (default: %(default)s)")
    p.add_argument("--dictionary", choices=["clt", "plt"], default="clt", help="which organism dictionary")
    p.add_argument("--max-feature-nodes", type=int, default=None, help="feature budget (default: all)")
    p.add_argument(
        "--open",
        action="store_true",
        help="when done, serve the graphs in the explorer (clew serve) and open it in a browser",
    )
    p.set_defaults(func=run)


def demo_prompts() -> list[tuple[str, str]]:
    """(task, prompt): the Dallas two-hop prompt, then the first held-out probe of each other task."""
    from clew.organism import TASKS, probes

    chosen = [("two_hop", DALLAS)]
    seen = {"two_hop"}
    for probe in probes(seed=0):
        if probe.task in TASKS and probe.task not in seen and probe.split == "heldout":
            chosen.append((probe.task, probe.prompt))
            seen.add(probe.task)
    return chosen


def shipped_store(kind: str, tc):
    """The organism's shipped feature store for dictionary ``kind``, or None when it has none."""
    from clew.commands.features import default_store_path, open_store
    from clew.features import fingerprint

    path = default_store_path(kind)
    return open_store(str(path), fingerprint=fingerprint(tc)) if path.is_file() else None


def run(args: argparse.Namespace) -> int:
    from clew.assets import ORGANISM
    from clew.attribution import analyze, describe_path, export_json, render_svg, strongest_paths, trace
    from clew.attribution.export import slug_from
    from clew.attribution.labels import promoted_token_labels
    from clew.commands.features import VIEWER_BASE, graph_labels, write_graph_features
    from clew.commands.trace import top_features
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, str(ORGANISM.dictionary_path(args.dictionary)))
    store = shipped_store(args.dictionary, tc)
    out = Path(args.out)
    for task, prompt in demo_prompts():
        graph = trace(model, tc, prompt, max_feature_nodes=args.max_feature_nodes, progress=False)
        analysis = analyze(graph)
        pruned, full, kept = analysis.pruned, analysis.scores, analysis.pruned_scores
        slug = slug_from(prompt)
        graph.save(out / f"{slug}.safetensors")
        if store is not None:
            labels = graph_labels(store, graph)
            write_graph_features(store, graph, pruned.node_mask, out)
            export_json(
                graph,
                analysis,
                out,
                slug,
                labels=labels,
                feature_json_base_url=VIEWER_BASE,
                model_id=VIEWER_BASE,
            )
        else:
            labels = promoted_token_labels(model, tc, graph)
            export_json(graph, analysis, out, slug, labels=labels)
        render_svg(graph, pruned, out / f"{slug}.svg", labels=labels)
        top = ", ".join(
            f"{label!r} {p:.2f}" for label, p in zip(graph.logit_labels[:3], graph.logit_probs.tolist())
        )
        print(f"\n[{task}] {prompt!r}")
        print(f"  predicts: {top}")
        print(
            f"  {graph.settings['n_active_features']} active features, {int(pruned.node_mask[: graph.n_features].sum())} "
            f"kept; replacement {full.replacement:.2f}, completeness {full.completeness:.2f} "
            f"(pruned: {kept.replacement:.2f}, {kept.completeness:.2f}); {graph.settings['seconds']:.2f} s"
        )
        if store is not None:
            print("  most influential features:")
            for line in top_features(graph, analysis, labels, k=5):
                print("    " + line)
        for path in strongest_paths(graph, pruned, k=3):
            print("  path:", describe_path(graph, path, labels))
    experiment(model, tc, store)
    print(f"\nwrote the graphs, viewer JSON and pictures to {out}/")
    if store is not None:
        print(f"labels and feature files ({out}/features/) from {store.path}")
    else:
        print("labels: the tokens each feature promotes (this organism ships no feature store)")
    if args.open:
        from clew.commands.serve import explorer_for, serve_folder

        first = f"{slug_from(DALLAS)}.safetensors"
        serve_folder(str(out), explorer_for(str(out)), "127.0.0.1", 0, True, graph=first)
    return 0


def experiment(model, tc, store=None, k: int = 20) -> None:
    """Test the Dallas graph's claim: find what carries Texas, take it out, put California's in."""
    from clew.attribution.labels import promoted_token_labels
    from clew.intervene.swap import carriers, swap_experiment

    found = carriers(model, tc, DALLAS, CONTRAST, " Austin", " Sacramento")
    texas = found[0]
    graph = texas.graph
    node = {tuple(f): n for n, f in enumerate(graph.features.tolist())}
    if store is not None:
        from clew.commands.features import graph_labels

        labels = graph_labels(store, graph)
    else:
        labels = promoted_token_labels(model, tc, graph)
    print(f"\n[experiment] what carries Texas in {DALLAS!r}: the features at the city that its graph routes")
    print(
        f"  to ' Austin' and that {CONTRAST!r} lacks ({len(texas.features)} found; the {k} most influential):"
    )
    for layer, pos, index, act, influence in texas.top(8):
        label = labels.get(node[(layer, pos, index)], "")
        print(f"  L{layer}/F{index}@{pos}  activation {act:.3f}  influence {influence:.4f}  [{label}]")
    print(
        f"  ... and {max(0, min(k, len(texas.features)) - 8)} more; California's {k} are found the same way"
    )
    report = swap_experiment(model, tc, DALLAS, CONTRAST, " Austin", " Sacramento", k=k, draws=3, found=found)
    print("\n".join("  " + line for line in report.markdown().splitlines()[2:]))

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
        "each: the top predictions, the graph's scores, and its circuit: the supernodes found in it (named "
        "from the organism's shipped feature store), the strongest paths from tokens to the answer, and "
        "each supernode taken out (predicted beside measured, with a random control); for the two-hop "
        "prompt, Texas's specific features swapped for California's. Files: the graph with its "
        "supernodes, the viewers' JSON with the feature files, and the circuit's picture.",
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
    from clew.attribution import export_json
    from clew.attribution.viewer_schema import slug_from
    from clew.commands.circuit import circuit_of, show, write
    from clew.commands.features import VIEWER_BASE, write_graph_features
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary(ORGANISM.name, str(ORGANISM.dictionary_path(args.dictionary)))
    store = shipped_store(args.dictionary, tc)
    out = Path(args.out)
    options = {"max_feature_nodes": args.max_feature_nodes}
    for task, prompt in demo_prompts():
        contrast = CONTRAST if task == "two_hop" else None
        found = circuit_of(model, tc, prompt, store, contrast, trace_options=options)
        graph, analysis = found.graph, found.analysis
        full, kept = analysis.scores, analysis.pruned_scores
        slug = slug_from(prompt)
        write(found, out, slug)
        if store is not None:
            write_graph_features(store, graph, analysis.pruned.node_mask, out)
        export_json(
            graph,
            analysis,
            out,
            slug,
            labels=found.labels,
            feature_json_base_url=VIEWER_BASE if store is not None else None,
            model_id=VIEWER_BASE if store is not None else None,
        )
        top = ", ".join(
            f"{label!r} {p:.2f}" for label, p in zip(graph.logit_labels[:3], graph.logit_probs.tolist())
        )
        print(f"\n[{task}] {prompt!r}" + (f"  (contrast: {contrast!r})" if contrast else ""))
        print(f"  predicts: {top}")
        print(
            f"  {graph.settings['n_active_features']} active features, "
            f"{int(analysis.pruned.node_mask[: graph.n_features].sum())} kept; replacement {full.replacement:.2f}, "
            f"completeness {full.completeness:.2f} (pruned: {kept.replacement:.2f}, {kept.completeness:.2f}); "
            f"{graph.settings['seconds']:.2f} s"
        )
        print("\n".join(show(found, indent="  ")))
    print(f"\nwrote the graphs (with their supernodes), the viewers' JSON and the circuit pictures to {out}/")
    if store is not None:
        print(f"names and feature files ({out}/features/) from {store.path}")
    else:
        print("names: the tokens each feature promotes (this organism ships no feature store)")
    if args.open:
        from clew.commands.serve import explorer_for, serve_folder

        first = f"{slug_from(DALLAS)}.safetensors"
        serve_folder(str(out), explorer_for(str(out)), "127.0.0.1", 0, True, graph=first)
    return 0

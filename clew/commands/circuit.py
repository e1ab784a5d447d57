"""``clew circuit``: a prompt's circuit: its graph grouped into named supernodes, summarised, drawn and tested."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

EPILOG = """\
examples:
  clew circuit "The capital of the state containing Dallas is" -m organism \\
      --contrast-prompt "The capital of the state containing Los Angeles is"
  clew circuit "27+79=" -m organism --no-claims
  clew circuit "Fact: the capital of France is" -m smollm2-135m -d ./tc --features tc.sqlite

prints the supernodes, the strongest paths from tokens to the answer (ranked by their bottleneck: the
smallest share of the output's influence on any of their edges), and what happens when each supernode
is taken out (predicted by the graph, measured constrained and free, beside a matched random control);
with --contrast-prompt, the swap of the two prompts' specific supernodes. Writes DIR/<slug>.safetensors
(with the supernodes in its annotations), DIR/<slug>-circuit.svg and DIR/<slug>-circuit.json.
See docs/circuits.md for the method."""


def register(sub: argparse._SubParsersAction) -> None:
    from clew.commands.trace import add_tracing_options

    p = sub.add_parser(
        "circuit",
        help="group a prompt's graph into named supernodes, summarise, draw and test it",
        description="Trace a prompt, group its graph's features into a few supernodes that each do one thing "
        "(same position, alike effect on the rest of the graph, same side of a contrast), name them from "
        "their examples, and show the circuit: a short text diagram, an SVG picture and an intervention table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="the text to trace")
    p.add_argument(
        "--model", "-m", required=True, help="a local folder, a .gguf file, a hub id or a built-in name"
    )
    p.add_argument("--dictionary", "-d", help="the transcoders (default: the model's own)")
    p.add_argument(
        "--contrast-prompt",
        metavar="TEXT",
        help="the same template with another subject (e.g. another city): features the two prompts do not "
        "share are grouped apart, and the two prompts' specific groups are swapped",
    )
    p.add_argument(
        "--features", metavar="STORE", help="a feature store of this dictionary (names the supernodes)"
    )
    p.add_argument("--out", "-o", default="circuits", help="output folder (default: %(default)s)")
    p.add_argument("--no-claims", action="store_true", help="skip the interventions")
    p.add_argument(
        "--group-threshold",
        type=float,
        default=0.5,
        help="similarity at which groups still merge (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random controls (default: %(default)s)")
    add_tracing_options(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=run, local_viewer=False)


@dataclass
class Found:
    """What :func:`circuit_of` found for one prompt."""

    graph: object
    analysis: object
    circuit: object
    claims: object | None
    labels: dict[int, str]


def circuit_of(
    model,
    tc,
    prompt: str,
    store=None,
    contrast_prompt: str | None = None,
    *,
    claims: bool = True,
    seed: int = 0,
    config=None,
    trace_options: dict | None = None,
) -> Found:
    """Trace ``prompt`` (and the contrast prompt), find its circuit and, with ``claims``, test it."""
    from clew.attribution import analyze, trace
    from clew.attribution.labels import promoted_token_labels
    from clew.circuits import find_circuit, measure_claims, measure_swap
    from clew.commands.features import graph_labels

    options = dict(trace_options or {})
    node_threshold = options.pop("node_threshold", 0.8)
    edge_threshold = options.pop("edge_threshold", 0.98)

    def one(text: str):
        graph = trace(model, tc, text, progress=False, **options)
        return graph, analyze(graph, node_threshold, edge_threshold)

    def labels_of(graph) -> dict[int, str]:
        return graph_labels(store, graph) if store is not None else promoted_token_labels(model, tc, graph)

    graph, analysis = one(prompt)
    labels = labels_of(graph)
    other = one(contrast_prompt) if contrast_prompt else None
    circuit = find_circuit(graph, analysis, labels, store, other[0] if other else None, config, model, tc)
    tested = None
    if claims:
        tested = measure_claims(model, tc, circuit, seed=seed)
        if other is not None:
            contrast = find_circuit(other[0], other[1], labels_of(other[0]), store, graph, config, model, tc)
            tested.swap = measure_swap(model, tc, circuit, contrast, seed=seed)
    return Found(graph, analysis, circuit, tested, labels)


def show(found: Found, indent: str = "") -> list[str]:
    """The circuit as printed: supernodes, strongest paths, the intervention table."""
    c = found.circuit
    lines = ["supernodes, single features and error groups:"] + ["  " + line for line in c.table()]
    if not any(b.kind in ("supernode", "feature") for b in c.boxes):
        lines += [
            "  (no supernode or feature holds enough of the influence to be shown: the dictionary's errors carry it)"
        ]
    lines += ["strongest paths (share of the output's influence on each edge, sign of its summed weight):"]
    lines += ["  " + line for line in c.diagram(3)] or [
        "  (none: no path from a token to a logit among the kept edges)"
    ]
    if found.claims is not None:
        lines += ["taking each out:"] + ["  " + line for line in found.claims.markdown().splitlines()]
    return [indent + line for line in lines]


def write(found: Found, out: Path, slug: str) -> list[Path]:
    """The graph (with its supernodes), the circuit's picture and its JSON."""
    import json

    from clew.circuits.picture import render_circuit
    from clew.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = [
        found.graph.save(out / f"{slug}.safetensors"),
        render_circuit(found.circuit, out / f"{slug}-circuit.svg"),
    ]
    data = found.circuit.to_json()
    if found.claims is not None:
        data["claims"] = [vars(c) for c in found.claims.claims]
        data["swap"] = vars(found.claims.swap) if found.claims.swap is not None else None
    write_atomic(out / f"{slug}-circuit.json", json.dumps(data, indent=1))
    return paths + [out / f"{slug}-circuit.json"]


def run(args: argparse.Namespace) -> int:
    from clew.attribution.viewer_schema import slug_from
    from clew.circuits import GroupingConfig
    from clew.commands.trace import check_tracing_options, feature_store
    from clew.errors import ClewError
    from clew.resolve import load_model_and_dictionary

    check_tracing_options(args)
    if not 0 < args.group_threshold <= 1:
        raise ClewError(f"--group-threshold must be in (0, 1], got {args.group_threshold}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ClewError(f"--out {out}: exists and is not a folder")
    model, tc = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
    store = feature_store(args, tc)
    import torch

    options = {
        "dtype": getattr(torch, args.dtype),
        "max_n_logits": args.max_n_logits,
        "desired_logit_prob": args.desired_logit_prob,
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
        "node_threshold": args.node_threshold,
        "edge_threshold": args.edge_threshold,
    }
    found = circuit_of(
        model,
        tc,
        args.prompt,
        store,
        args.contrast_prompt,
        claims=not args.no_claims,
        seed=args.seed,
        config=GroupingConfig(threshold=args.group_threshold),
        trace_options=options,
    )
    top = ", ".join(
        f"{label!r} {p:.2f}"
        for label, p in zip(found.graph.logit_labels[:3], found.graph.logit_probs.tolist())
    )
    print(f"{args.prompt!r} predicts {top}")
    print("\n".join(show(found)))
    paths = write(found, out, slug_from(args.prompt))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0

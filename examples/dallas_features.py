"""The Dallas graph's most influential features, with the organism's shipped labels and top examples.

    python examples/dallas_features.py [--k 10] [--examples 3] > dallas-features.md

Traces "The capital of the state containing Dallas is" through the organism and its shipped CLT, ranks
the kept feature nodes by influence on the logits, and prints a markdown table (the section of
docs/features.md is this script's output).
"""

from __future__ import annotations

import argparse

from clew.attribution import analyze, trace
from clew.commands.demo import DALLAS
from clew.commands.features import default_store_path
from clew.features import FeatureStore, fingerprint
from clew.features.viewer import render_example
from clew.resolve import load_model_and_dictionary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--examples", type=int, default=3)
    a = p.parse_args()
    model, tc = load_model_and_dictionary("organism", None)
    graph = trace(model, tc, DALLAS, progress=False)
    analysis = analyze(graph)
    keep, influence = analysis.pruned.node_mask, analysis.pruned.influence
    nodes = sorted((n for n in range(graph.n_features) if keep[n]), key=lambda n: -float(influence[n]))
    top = ", ".join(f"{t!r} {p:.2f}" for t, p in zip(graph.logit_labels[:3], graph.logit_probs.tolist()))
    print(f"Prompt: `{DALLAS}` — the organism predicts {top}.\n")
    print("| rank | feature | at token | influence | label | top examples (peak in ⟦ ⟧) |")
    print("|---:|---|---|---:|---|---|")
    with FeatureStore.open(default_store_path("clt"), fingerprint=fingerprint(tc)) as store:
        for rank, n in enumerate(nodes[: a.k], 1):
            layer, pos, index = (int(v) for v in graph.features[n])
            record = store.feature(layer, index)
            examples = "<br>".join(
                f"`{render_example(store, e, width=70).replace('|', '¦')}` ({e.activation:.2f})"
                for e in record.of_kind("top")[: a.examples]
            )
            label = store.label(layer, index).replace("|", "¦")
            print(
                f"| {rank} | {layer}/{index} | {graph.token_strings[pos]!r} | {float(influence[n]):.3f} | "
                f"{label} | {examples} |"
            )


if __name__ == "__main__":
    main()

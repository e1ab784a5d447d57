"""``clew check GRAPH``: what the graph predicts when features are zeroed, beside what happens."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  clew check graphs/the-capital-of-the-state-containing-dallas-is.safetensors
  clew check graphs/dallas.safetensors --group texas L0/F136@7 L0/F981@7 --group say L3/F717@8

Without --group: the five most influential features one by one, the twenty most influential together,
and all features of each of the three most influential positions. Columns: "direct" is minus the sum of
the group's edges into each logit target, which the constrained run (everything else frozen) measures
exactly; "through graph" also carries the change along the graph's own edges (features in their linear
regime); the free runs are the real model with the dictionary's errors frozen or live. Changes are of
the logit minus the mean logit. The agreement figure is the correlation of "through graph" with "free,
errors frozen"."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="test a graph's claims: predicted against measured changes when its features are zeroed",
        description="Zero groups of a graph's features and print, for each logit target, the change the graph "
        "predicts beside the changes measured in the constrained model and in the real one, with an "
        "agreement figure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("graph", help="a graph file (.safetensors) from clew trace")
    p.add_argument("--model", "-m", help="the model (default: the one the graph names)")
    p.add_argument("--dictionary", "-d", help="the transcoders (default: the graph's)")
    p.add_argument(
        "--group",
        nargs="+",
        action="append",
        metavar=("NAME", "NODE"),
        help="a named group of the graph's features",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.errors import ClewError
    from clew.intervene import parse_node
    from clew.intervene.check import check_claims, groups_by_influence
    from clew.resolve import load_graph_and_model

    graph, model, tc = load_graph_and_model(args.graph, args.model, args.dictionary, args.device)
    if args.group:
        table = {tuple(f): n for n, f in enumerate(graph.features.tolist())}
        groups = {}
        for name, *nodes in args.group:
            if not nodes:
                raise ClewError(
                    f"--group {name}: name the group, then its features (e.g. --group texas L0/F136@7)"
                )
            members = []
            for text in nodes:
                node = parse_node(text)
                if node.kind != "feature":
                    raise ClewError(f"--group {name}: {text!r} is not a feature")
                for p in node.at(graph.n_pos):
                    if (node.layer, p, node.feature) not in table:
                        raise ClewError(f"--group {name}: {text!r} is not a feature node of the graph")
                    members.append(table[(node.layer, p, node.feature)])
            groups[name] = members
    else:
        groups = groups_by_influence(graph)
    report = check_claims(model, tc, graph, groups)
    print(f"{graph.prompt!r}: zeroing each group")
    print(report.markdown())
    return 0

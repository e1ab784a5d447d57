"""``clew toys superposition``: train the toy models of superposition and draw their figures."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toys",
        help="toy models with known answers (superposition)",
        description="Train small toy models on the CPU and draw what they learned.",
    )
    toys = p.add_subparsers(dest="toy", metavar="TOY")
    s = toys.add_parser(
        "superposition",
        help="the ReLU output model x' = ReLU(W^T W x + b): phase diagram and feature geometry",
        description="Train toy models of superposition (n sparse features in m < n dimensions) in seconds: "
        "the n=2, m=1 phase diagram over sparsity and relative importance, dimensions per feature for "
        "n=20, m=5, and the geometry of five features in two dimensions. Writes three SVG figures.",
    )
    s.add_argument("--out", "-o", default="toys", help="output folder for the figures (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument("--quick", action="store_true", help="half the training steps")
    s.set_defaults(func=run_superposition)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_superposition(args: argparse.Namespace) -> int:
    import time

    from clew.toys import superposition_report

    started = time.perf_counter()
    report = superposition_report(args.out, seed=args.seed, quick=args.quick)
    print(report.summary())
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0

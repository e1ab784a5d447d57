"""``clew organism``: build clew's own small language model, or grade a built one."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  clew organism build --ship                 # the shipped organism (the model: ~15 minutes on 2 CPU cores)
  clew organism build --tiny --out /tmp/org  # a miniature one in under a minute (what the tests build)
  clew organism eval                         # grade the shipped organism on its planted tasks
  clew organism text --kind induction -o stories.txt   # its training text, e.g. for clew heads --text
  clew organism features --dictionary clt    # (re)collect the shipped clt's feature store

--ship writes into the package (clew/assets/organism) and the report to docs/organism.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "organism",
        help="build or grade clew's own small language model",
        description="clew's own small language model: a 4-layer Llama trained on a generated corpus with "
        "planted facts, two-hop questions, induction, addition and antonyms, with its transcoders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    b = verbs.add_parser("build", help="corpus, tokenizer, model, dictionaries, evaluation, report")
    b.add_argument("--out", "-o", default="organism-build", help="output folder (default: %(default)s)")
    b.add_argument(
        "--ship", action="store_true", help="build the shipped one: into the package, report in docs/"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    b.add_argument("--steps", type=int, help="model training steps (default: 1800, or 40 with --tiny)")
    b.add_argument(
        "--minutes", type=float, help="instead of --steps: as many steps as fit in this many minutes"
    )
    b.add_argument("--tiny", action="store_true", help="a miniature organism, in under a minute")
    b.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    b.add_argument("--no-dictionaries", action="store_true", help="skip the transcoders")
    b.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="keep the model every N steps (and before training) in OUT/checkpoints/step-NNNNN/, for "
        "`clew heads --checkpoints` (default: none)",
    )
    b.add_argument(
        "--dictionary-features", type=int, metavar="F", help="features per layer of each transcoder"
    )
    b.add_argument("--dictionary-steps", type=int, metavar="N", help="training steps of each transcoder")
    b.add_argument("--report", help="where to write the markdown report (default: beside --out)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)
    e = verbs.add_parser("eval", help="grade a built organism on its planted tasks")
    e.add_argument("--model", "-m", help="an organism folder (default: the shipped one)")
    e.add_argument("--wrong", type=int, default=0, metavar="N", help="also print N wrong answers")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    e.set_defaults(func=run_eval)
    t = verbs.add_parser(
        "text",
        help="write documents like the organism's training text",
        description="Write documents of the organism's corpus (from the same generator and seed, never "
        "the held-out facts, sums or surnames), separated by blank lines: to read what it was trained on, or to "
        "score its attention heads on text of its own kind with clew heads --text.",
    )
    t.add_argument("--out", "-o", help="file to write (default: standard output)")
    t.add_argument("--documents", "-n", type=int, default=200, help="how many (default: %(default)s)")
    t.add_argument(
        "--kind",
        choices=("any", "facts", "two_hop", "induction", "addition", "antonyms", "filler", "mixed"),
        default="any",
        help="only documents of this kind (default: the corpus's mix)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the corpus (default: %(default)s)")
    t.set_defaults(func=run_text)
    f = verbs.add_parser(
        "features",
        help="collect the feature stores of a built organism's dictionaries (no retraining)",
        description="Collect each dictionary's feature store (clew features) from the organism's own "
        "corpus into <dictionary>/features.sqlite: what `clew organism build` does after training, for an "
        "organism already built. A killed run resumes.",
    )
    f.add_argument("--model", "-m", help="an organism folder (default: the shipped one)")
    f.add_argument("--dictionary", choices=("clt", "plt"), action="append", help="which (default: both)")
    f.add_argument("--documents", "-n", type=int, help="documents of the corpus (default: as shipped)")
    f.add_argument("--seed", type=int, default=0, help="seed of the corpus (default: %(default)s)")
    f.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.set_defaults(func=run_features)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def run_features(args: argparse.Namespace) -> int:
    from clew.assets import ORGANISM
    from clew.organism.features import SHIPPED_DOCS, build_stores

    folder = Path(args.model) if args.model else ORGANISM.model_path()
    written = build_stores(
        folder,
        tuple(args.dictionary or ("clt", "plt")),
        seed=args.seed,
        max_docs=args.documents or SHIPPED_DOCS,
        device=args.device,
        progress=not args.quiet,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def _docs_folder() -> Path | None:
    """The repository's ``docs/`` when clew runs from a checkout."""
    import clew

    docs = Path(clew.__file__).resolve().parent.parent / "docs"
    return docs if docs.is_dir() else None


def run_build(args: argparse.Namespace) -> int:
    from clew.assets import ORGANISM
    from clew.errors import ClewError
    from clew.organism import build

    if args.steps is not None and args.steps < 1:
        raise ClewError(f"--steps must be positive, got {args.steps}")
    if args.minutes is not None and args.minutes <= 0:
        raise ClewError(f"--minutes must be positive, got {args.minutes}")
    if args.steps is not None and args.minutes is not None:
        raise ClewError("give --steps or --minutes, not both")
    if args.checkpoint_every < 0:
        raise ClewError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    if args.ship and args.tiny:
        raise ClewError("--ship builds the real organism; it cannot be --tiny")
    out, report = Path(args.out), args.report
    if args.ship:
        out = ORGANISM.folder
        docs = _docs_folder()
        report = report or (docs / "organism.md" if docs else None)
    result = build(
        out,
        seed=args.seed,
        minutes=args.minutes,
        steps=args.steps,
        tiny=args.tiny,
        device=args.device,
        dictionaries=not args.no_dictionaries,
        dictionary_features=args.dictionary_features,
        dictionary_steps=args.dictionary_steps,
        report_path=report,
        progress=not args.quiet,
        checkpoint_every=args.checkpoint_every,
    )
    print(result.scores.markdown())
    print(f"\norganism written to {result.folder}")
    below = result.info["below_floors"]
    if below and not args.tiny:
        print("below the floors: " + "; ".join(below))
        return 1
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from clew.assets import ORGANISM, build_info
    from clew.models.loading import load_folder
    from clew.organism import examine, greedy_judge, probes

    folder = Path(args.model) if args.model else ORGANISM.model_path()
    info = build_info(folder)
    model = load_folder(folder, device=args.device)
    scores = examine(greedy_judge(model, model.tokenizer), probes(info.get("seed", 0)))
    print(scores.markdown())
    for probe in scores.wrong[: args.wrong]:
        print(f"wrong: [{probe.task}/{probe.split}] {probe.prompt!r} -> expected {probe.answer!r}")
    below = scores.below_floors()
    if below:
        print("below the floors: " + "; ".join(below))
    return 1 if below else 0


def run_text(args: argparse.Namespace) -> int:
    import random
    import sys

    from clew.errors import ClewError
    from clew.organism import corpus

    if args.documents < 1:
        raise ClewError(f"--documents must be positive, got {args.documents}")
    mix = corpus.Mix() if args.kind == "any" else corpus.Mix.only(args.kind)
    writer = corpus.Writer(
        corpus.Split.from_seed(args.seed), random.Random(f"clew-organism-text-{args.seed}"), mix
    )
    text = "\n\n".join(writer.document() for _ in range(args.documents)) + "\n"
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as err:
            raise ClewError(f"cannot write --out {args.out}: {err}") from None
        print(f"wrote {args.documents} documents ({len(text):,} characters) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

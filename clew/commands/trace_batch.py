"""``clew trace-batch``: many prompts to a graph store, in this process or on Ray, resumable."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  clew trace-batch prompts.txt --model organism --out store
  clew trace-batch cities.jsonl --model organism --out store --ray --workers 2
  clew trace-batch prompts.jsonl -m smollm2-135m -d ./tc --out store --address ray://head:10001 --workers 16

PROMPTS is a text file (one prompt a line) or JSON Lines: {"prompt": ..., "id": ..., "targets": [...],
"contrast": [A, B], any other field}. A line that cannot be read is reported with its number and skipped.
Rerunning the same command skips what is done; a store written by another model, dictionary or
settings is refused. Ray is optional: pip install clew[ray]."""


def register(sub: argparse._SubParsersAction) -> None:
    from clew.commands.trace import add_tracing_options

    p = sub.add_parser(
        "trace-batch",
        help="trace many prompts into a graph store (in process or on Ray)",
        description="Trace every prompt of a file into a graph store: one graph file per prompt (the file "
        "clew trace writes) and an SQLite index of prompts, scores, sizes, timing and workers. Each worker "
        "loads the model and dictionary once.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", help="a text file (one prompt a line) or a .jsonl file")
    p.add_argument(
        "--model", "-m", required=True, help="a local folder, a .gguf file, a hub id or a built-in name"
    )
    p.add_argument(
        "--dictionary", "-d", help="the transcoders (any layout clew reads); default: the model's own"
    )
    p.add_argument("--out", "-o", required=True, help="the store folder (created, or resumed)")
    p.add_argument("--ray", action="store_true", help="run on a local Ray cluster started for this run")
    p.add_argument(
        "--address",
        help="run on the existing Ray cluster at this address (ray://host:10001, host:6379, or auto: the one running on this machine)",
    )
    p.add_argument("--workers", type=int, default=2, help="Ray workers (default: %(default)s)")
    p.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per Ray worker (default: 1)"
    )
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default: 0)")
    p.add_argument(
        "--threads", type=int, help="torch threads per worker (default: 1 on Ray, torch's own here)"
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="trace only the prompts whose position in the file is I modulo N (one store per shard; "
        "clew aggregate reads several stores)",
    )
    p.add_argument(
        "--max-attempts", type=int, default=3, help="tries of a prompt whose worker dies (default: 3)"
    )
    p.add_argument("--retry-failed", action="store_true", help="trace again the prompts that failed before")
    add_tracing_options(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.batch import BatchConfig, GraphStore, read_prompts, run_batch
    from clew.commands.trace import check_tracing_options
    from clew.errors import ClewError
    from clew.resolve import default_dictionary

    check_tracing_options(args)
    for name in ("workers", "max_attempts", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ClewError(f"--{name.replace('_', '-')} must be positive, got {value}")
    read = read_prompts(args.prompts)
    for problem in read.problems:
        print(f"clew: {args.prompts}: {problem}: skipped", file=sys.stderr)
    specs = read.specs
    if args.shard:
        i, _, n = args.shard.partition("/")
        if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
            raise ClewError(f"--shard {args.shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        specs = specs[int(i) :: int(n)]
    config = BatchConfig(
        model=args.model,
        dictionary=args.dictionary or default_dictionary(args.model),
        device=args.device,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        dtype=args.dtype,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        threads=args.threads,
    )
    store = GraphStore(args.out)
    try:
        report = run_batch(
            store,
            specs,
            config,
            ray=args.ray,
            address=args.address,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
            max_attempts=args.max_attempts,
            retry_failed=args.retry_failed,
            progress=not args.quiet,
        )
        counts = store.counts()
    finally:
        store.close()
    for ident, why in report.failed:
        print(f"clew: prompt {ident}: {why}", file=sys.stderr)
    rate = report.traced / max(report.seconds - report.startup_seconds, 1e-9)
    print(
        f"{report.traced} graphs traced, {report.skipped} already done, {len(report.failed)} failed, "
        f"{report.workers_lost} workers lost; {report.seconds:.1f} s ({report.startup_seconds:.1f} s loading, "
        f"then {rate:.2f} prompts/s)"
    )
    if report.peak_rss_mb:
        print(
            "peak memory per worker: " + ", ".join(f"{w} {m:.0f} MB" for w, m in report.peak_rss_mb.items())
        )
    print(f"store {args.out}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if read.problems or report.failed else 0

"""Batch tracing's throughput: in process against Ray with 1 and 2 workers, on this machine.

    python bench/batch.py [--prompts 60]

The organism's two-hop prompts (examples/two_hop_batch.py), each run into a fresh store. Reported per
run: the wall time, the start-up (Ray itself and every worker loading the model and dictionary), the
steady rate after start-up (prompts per second), and each worker's peak resident memory. Ratios are
against the in-process run with one torch thread, the baseline, measured in the same script. Every
worker runs one torch thread unless a row says otherwise, so the graphs are bitwise the same in all runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prompts(n: int):
    from clew.batch.prompts import PromptSpec

    spec = importlib.util.spec_from_file_location("two_hop_batch", ROOT / "examples" / "two_hop_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [PromptSpec(r["id"], r["prompt"], fields={"state": r["state"]}) for r in module.prompts(n)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=60)
    args = parser.parse_args()

    from clew.batch import BatchConfig, GraphStore, run_batch
    from clew.resolve import default_dictionary

    specs = prompts(args.prompts)
    runs = [
        ("in process, 1 thread", dict(), 1),
        ("in process, 2 threads", dict(), 2),
        ("Ray, 1 worker", dict(ray=True, workers=1), 1),
        ("Ray, 2 workers", dict(ray=True, workers=2), 1),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="clew-bench-batch-"))
    results = []
    try:
        for name, how, threads in runs:
            import torch

            torch.set_num_threads(threads)
            config = BatchConfig("organism", default_dictionary("organism"), threads=threads)
            store = GraphStore(tmp / name.replace(" ", "_").replace(",", ""))
            start = time.perf_counter()
            report = run_batch(store, specs, config, progress=False, **how)
            wall = time.perf_counter() - start
            assert report.traced == len(specs), report
            rate = report.traced / (wall - report.startup_seconds)
            mem = sorted(report.peak_rss_mb.values())
            results.append((name, wall, report.startup_seconds, rate, mem))
            store.close()
            print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = results[0][3]
    base_wall = results[0][1]
    print(f"{len(specs)} organism two-hop prompts, {os.cpu_count()} CPUs")
    print(
        f"{'run':<24} {'wall s':>7} {'start-up s':>10} {'prompts/s':>10} {'vs base':>8} {'wall vs base':>12}  peak MB per worker"
    )
    for name, wall, startup, rate, mem in results:
        print(
            f"{name:<24} {wall:>7.1f} {startup:>10.1f} {rate:>10.2f} {rate / base:>7.2f}x {base_wall / wall:>11.2f}x  "
            + ", ".join(f"{m:.0f}" for m in mem)
        )
    print(f"driver peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

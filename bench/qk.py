"""QK attribution's speed on SmolLM2-135M with random 2,048-feature JumpReLU transcoders.

    python bench/qk.py [--threads 2] [--repeats 3]

The model and transcoders are the ones ``bench/vs_circuit_tracer.py`` writes (made here when absent);
the prompt is its Dallas prompt. Timed, each the best of ``--repeats``:

- ``forward``: one recorded forward pass of the model (the baseline the ratios are taken against);
- ``local``: building the prompt's local replacement model (the recorded forward, the active
  features, the error nodes and the engine's source layout), which every QK call starts from;
- ``one triple``: one head's score at one (query, key) pair split over pairs of pieces;
- ``all heads``: every head of every layer and every key at the last position (``qk_query``).

Floors (issue 18): one triple under 1 s, all heads for one query position under 30 s, on 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vs_circuit_tracer as vct  # noqa: E402  (the shared model and transcoders)


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder
    from clew.models.sources import resolve_model_source
    from clew.qk import qk_attribution, qk_query
    from clew.replacement import LocalReplacement

    vct.WORK.mkdir(exist_ok=True)
    folder = resolve_model_source("smollm2-135m")
    model = load_folder(folder)
    tc = load_transcoder(vct.make_transcoders(folder, vct.WORK / "random-jumprelu-plt"))
    ids = torch.tensor(vct.prompt_ids(folder, None))
    P, L, H = len(ids), model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        forward, _ = best(lambda: model.run(ids[None], record=True), a.repeats)
    build, local = best(lambda: LocalReplacement(model, tc, ids), a.repeats)
    triple, r = best(lambda: qk_attribution(local, 18, 6, P - 1, 3), a.repeats)
    every, results = best(lambda: qk_query(local, P - 1), 1)
    n_pairs = sum(x.pairs.numel() for x in results)
    print(
        f"SmolLM2-135M, {P} tokens, {local.n_features} active features of 2,048 per layer, {a.threads} threads"
    )
    print(f"{'step':<28} {'seconds':>9} {'x forward':>10}")
    for name, t in (
        ("forward (recorded)", forward),
        ("local replacement model", build),
        ("one triple (L18.H6, 10->3)", triple),
        (f"all heads, last query ({len(results)})", every),
    ):
        print(f"{name:<28} {t:>9.3f} {t / forward:>10.1f}")
    print(
        f"one triple: {r.pairs.shape[0]} x {r.pairs.shape[1]} pairs; all heads: {n_pairs:,} pairs over {L} layers x {H} heads x {P} keys"
    )
    print(
        f"floors: one triple {'met' if triple < 1 else 'MISSED'} (< 1 s), all heads {'met' if every < 30 else 'MISSED'} (< 30 s)"
    )


if __name__ == "__main__":
    main()

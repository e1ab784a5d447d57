"""bfloat16 against float32 in clew's engine: SmolLM2-135M with the random JumpReLU transcoders of
``bench/vs_circuit_tracer.py`` (made there on first use), 2 threads, the Dallas prompt.

    python bench/bfloat16.py

For each budget: the best of two runs in each precision, and, where both traces kept the same
feature nodes, the largest difference of any edge relative to the largest edge (under a budget the
ranking itself may pick other features in bfloat16, and then the graphs are not comparable).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vs_circuit_tracer as B  # noqa: E402


def main() -> None:
    from clew.attribution import trace
    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder
    from clew.models.sources import resolve_model_source

    torch.set_num_threads(2)
    folder = resolve_model_source("smollm2-135m")
    model = load_folder(folder, tokenizer=False)
    tc = load_transcoder(B.make_transcoders(folder, B.WORK / "random-jumprelu-plt"))
    ids = torch.tensor(B.prompt_ids(folder, None))
    print(f"{'budget':>7} {'float32 s':>10} {'bfloat16 s':>11} {'ratio':>6} {'largest edge error':>19}")
    for budget in (256, 1024, None):
        best, graphs = {}, {}
        for dtype in (torch.float32, torch.bfloat16) * 2:
            t = time.perf_counter()
            graphs[dtype] = trace(model, tc, ids, max_feature_nodes=budget, dtype=dtype, progress=False)
            best[dtype] = min(best.get(dtype, float("inf")), time.perf_counter() - t)
        a, b = graphs[torch.float32], graphs[torch.bfloat16]
        if torch.equal(a.features, b.features):
            err = float((a.adjacency.float() - b.adjacency.float()).abs().max() / a.adjacency.abs().max())
            error = f"{100 * err:.2f}%"
        else:
            error = "other nodes"
        f32, bf16 = best[torch.float32], best[torch.bfloat16]
        print(f"{budget or 'all':>7} {f32:>10.2f} {bf16:>11.2f} {f32 / bf16:>5.2f}x {error:>19}")


if __name__ == "__main__":
    main()

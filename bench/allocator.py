"""What keeping freed memory (clew.allocator) is worth: the same work with glibc's malloc as it comes
and as clew's training loops set it.

    python bench/allocator.py [--threads 2]

Each workload runs in a fresh process twice, once with ``CLEW_MALLOC=system`` (the baseline, malloc
untouched) and once as clew runs; the script prints wall time, system (kernel) time and peak memory of
both, and their ratios. Workloads: organism training steps (forward, backward, AdamW on a batch of 16 x
256 tokens), and for comparison an attribution graph of the organism with every active feature
(tracing leaves malloc alone; this row shows what the setting would give it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def work(kind: str) -> dict:
    import torch

    from clew import allocator
    from clew.models import load_model

    allocator.keep_freed_memory()  # as the training loops do; nothing unless CLEW_MALLOC=system is unset

    model = load_model("organism")
    start, t0 = os.times(), time.perf_counter()
    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        for _ in range(12):
            batch = torch.randint(3, model.cfg.vocab_size, (16, 257), generator=g)
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        from clew.assets import ORGANISM
        from clew.attribution import trace
        from clew.resolve import load_model_and_dictionary

        model, tc = load_model_and_dictionary("organism", str(ORGANISM.dictionary_path("clt")))
        prompt = " ".join(["The capital of the state containing Dallas is Austin."] * 6)
        trace(model, tc, prompt, progress=False)
    end = os.times()
    return {
        "tuned": allocator._done,
        "seconds": time.perf_counter() - t0,
        "system": end.system - start.system,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", choices=["train", "trace"])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(work(a.worker)))
        return
    print(f"{'workload':>9} {'malloc':>8} {'seconds':>8} {'system s':>9} {'peak MB':>8}")
    for kind in ("train", "trace"):
        results = {}
        for mode in ("system", "clew"):
            env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "CLEW_MALLOC": mode}
            out = subprocess.run(
                [sys.executable, __file__, "--worker", kind],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            r = results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{kind:>9} {mode:>8} {r['seconds']:>8.2f} {r['system']:>9.2f} {r['peak_mb']:>8.0f}")
        base, ours = results["system"], results["clew"]
        print(
            f"{kind:>9} {'ratio':>8} {base['seconds'] / ours['seconds']:>7.2f}x "
            f"{'':>9} {ours['peak_mb'] / base['peak_mb']:>7.2f}x  (speed-up; memory clew/system)"
        )


if __name__ == "__main__":
    main()

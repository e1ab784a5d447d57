"""Attribution time and peak memory against prompt length, on a SmolLM2-shaped model with random weights.

    python bench/scale_random.py [--device cpu|cuda] [--lengths 64 256 1024] [--budget 4096]

For machines without the real weights (a lent GPU machine, say): same shapes as SmolLM2-135M
(30 layers, width 576, 9 query and 3 key/value heads), random JumpReLU transcoders of 2,048 features
per layer with thresholds putting about 0.4% of features on. Prints, per length, the number of
active features, seconds, the peak memory (GPU allocator peak on CUDA, process peak RSS on CPU), and
memory per token: the ratio between lengths shows whether memory grows linearly.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hf_tiny import smollm2_config  # noqa: E402  (the tests' fixture module)


def build(device: str, seed: int = 0):
    from clew.dictionaries.transcoder import Transcoder, TranscoderConfig
    from clew.models import Transformer

    cfg = smollm2_config()
    g = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model = model.to(device).eval()
    tc = Transcoder(
        TranscoderConfig(
            n_layers=30,
            d_model=576,
            n_features=2048,
            kind="plt",
            activation="jumprelu",
            read="mlp_in",
            write="mlp_out",
        )
    )
    calib = torch.randint(0, cfg.vocab_size, (1, 64), generator=g).to(device)
    with torch.no_grad():
        cache = model.run(calib, record=True).cache
        for layer in range(30):
            x = cache.mlp_in[layer][0].cpu()
            w = torch.randn(2048, 576, generator=g) / x.norm(dim=-1).mean()
            tc.W_enc[layer] = w
            tc.threshold[layer] = (x[1:] @ w.T).flatten().quantile(0.996)
            tc.W_dec[layer].copy_(torch.randn(2048, 576, generator=g) * 0.05)
    return model, tc.to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--budget", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from clew.attribution import trace

    model, tc = build(a.device)
    print(f"device {a.device}, budget {a.budget}, batch {a.batch_size}, {a.dtype}")
    print(f"{'tokens':>7} {'active':>8} {'seconds':>8} {'peak MB':>9} {'MB/token':>9}")
    for n in a.lengths:
        ids = torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(n))
        if a.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        graph = trace(
            model,
            tc,
            ids,
            max_feature_nodes=a.budget,
            batch_size=a.batch_size,
            dtype=getattr(torch, a.dtype),
            progress=False,
        )
        if a.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        dt = time.perf_counter() - t0
        print(
            f"{n:>7} {graph.settings['n_active_features']:>8} {dt:>8.2f} {peak:>9.0f} {peak / n:>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

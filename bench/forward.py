"""clew's forward pass against transformers' on the same model, same process, 2 threads.

    python bench/forward.py [--model smollm2-135m] [--lengths 16 128] [--repeats 20]

Prints, for each prompt length, the median time of each and the ratio clew / transformers
(the floor is 1.1: clew no slower than 1.1x), and the largest logit difference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from clew.models import load_model
    from clew.models.sources import resolve_model_source

    folder = resolve_model_source(args.model)
    ours = load_model(args.model, tokenizer=False, device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    print(f"model {args.model}, {args.threads} threads, median of {args.repeats}")
    print(f"{'tokens':>8} {'clew ms':>9} {'hf ms':>9} {'ratio':>7} {'max |dlogit|':>13}")
    for n in args.lengths:
        tokens = torch.randint(0, ours.cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            a = median_time(lambda t=tokens: ours(t), args.repeats)
            b = median_time(lambda t=tokens: theirs(t).logits, args.repeats)
            diff = (ours(tokens) - theirs(tokens).logits).abs().max().item()
        print(f"{n:>8} {a * 1e3:>9.1f} {b * 1e3:>9.1f} {a / b:>7.3f} {diff:>13.2e}")


if __name__ == "__main__":
    main()

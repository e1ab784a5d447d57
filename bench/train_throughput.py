"""Transcoder training throughput (tokens/s), and how it compares with the model's own forward pass.

    python bench/train_throughput.py [--threads 2] [--device cpu] [--skip-smollm2] [--random-smollm2]

For each setting (a tiny Llama built here; SmolLM2-135M's first layers when ``clew.load_model`` can
load it, or a randomly initialised model of its shape with ``--random-smollm2``), a PLT and a CLT:

- ``forward``: the activations alone (the model up to the last layer trained, as the data pipeline
  runs it) over the same contexts, in tokens/s;
- ``dict step``: one training step of the dictionary alone (forward, backward, Adam) on activations
  already in memory;
- ``pipeline``: the whole trainer (text -> tokens -> activations -> shuffled batches -> steps), with the
  model's forward included, one whole shuffling block at a time.

Each timing is the best of ``--repeats`` (the machine may be shared). Ratios: pipeline / forward (1.0
would mean training costs nothing beyond computing the activations) and the share of the pipeline's
time spent in the dictionary's steps (the rest: the forward, tokenising, shuffling).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hf_tiny import TEXT_WORDS, CharTokenizer, smollm2_config  # noqa: E402  (the tests' fixture module)

from clew.training import TrainConfig, Trainer
from clew.training.data import activations


def tiny_llama(device: str):
    """A small randomly initialised Llama (through transformers' config and clew's loader)."""
    import transformers as tf

    from clew.models.loading import load_folder

    cfg = tf.LlamaConfig(
        vocab_size=256,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="clew-bench-"))
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    model = load_folder(folder, tokenizer=False, device=device)
    model.tokenizer = CharTokenizer()
    return model


def random_smollm2(device: str):
    """SmolLM2-135M's shape with random weights (throughput does not depend on the weights)."""
    from clew.models import Transformer

    torch.manual_seed(0)
    model = Transformer(smollm2_config()).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.tokenizer = CharTokenizer()
    return model


def write_text(path: Path, n_docs: int = 3000) -> Path:
    r = random.Random(0)
    path.write_text(
        "\n\n".join(" ".join(r.choice(TEXT_WORDS) for _ in range(r.randint(20, 200))) for _ in range(n_docs))
    )
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best(fn, repeats: int, device: torch.device) -> float:
    """The shortest of ``repeats`` timed calls (other programs on a shared machine only ever add time)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(model, text: Path, name: str, kind: str, layers: list[int], args) -> None:
    device = next(model.parameters()).device
    cfg = TrainConfig(
        model=name, data=str(text), out=tempfile.mkdtemp(prefix="clew-bench-out-"), kind=kind,
        activation=args.activation, expansion=args.expansion, layers=layers, ctx_len=args.ctx_len,
        batch_size=args.batch_size, buffer_tokens=args.buffer_tokens, data_shards=1, model_batch=args.model_batch,
        steps=10**6, eval_contexts=0, checkpoint_every=0, progress=False, device=str(device),
    )  # fmt: skip
    trainer = Trainer(cfg, model)
    stream, per_block = trainer.stream, trainer.stream.batches_per_block
    for _ in range(per_block):  # the first block was computed in Trainer(): use it up untimed
        trainer._step()

    # the pipeline, one whole block at a time: its activations computed, shuffled, then its steps
    def block() -> None:
        for _ in range(per_block):
            trainer._step()

    block_s = best(block, args.repeats, device)
    tokens = per_block * cfg.batch_size

    # the forward alone over one block's contexts
    ids = torch.randint(
        3, 90, (stream.block_contexts, cfg.ctx_len), generator=torch.Generator().manual_seed(0)
    )
    ids = ids.to(device)

    def forward() -> None:
        for chunk in ids.split(cfg.model_batch):
            activations(model, chunk, layers, cfg.read, cfg.write)

    forward_s = best(forward, args.repeats, device) * tokens / (stream.block_contexts * (cfg.ctx_len - 1))

    # one dictionary step alone, on activations in memory
    module, optim = trainer.module, trainer.optim
    x, y = stream.next_batch()

    def step() -> None:
        out = module(x, y, 1e-3)
        optim.zero_grad(set_to_none=True)
        out.loss.backward()
        optim.step()

    step_s = best(step, args.repeats, device) * per_block
    F = module.n_features
    print(
        f"{name:<22} {kind:<4} {len(layers):>2}L F={F:<6} {tokens / forward_s:>10.0f} {tokens / step_s:>10.0f} "
        f"{tokens / block_s:>10.0f} {block_s / forward_s:>9.2f} {step_s / block_s:>9.0%}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--activation", default="jumprelu")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--buffer-tokens", type=int, default=2048)
    parser.add_argument("--model-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="each timing is the best of this many")
    parser.add_argument(
        "--smollm2-layers", type=int, default=4, help="train on SmolLM2's first this many layers"
    )
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--random-smollm2", action="store_true", help="SmolLM2's shape, random weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = write_text(Path(tempfile.mkdtemp(prefix="clew-bench-text-")) / "text.txt")
    print(
        f"{args.threads} threads, {args.device}, {args.activation}, batch {args.batch_size} tokens, ctx {args.ctx_len}"
    )
    print(
        f"{'model':<22} {'kind':<4} {'layers/F':>11} {'forward':>10} {'dict step':>10} {'pipeline':>10} "
        f"{'pipe/fwd':>9} {'in steps':>9}   (tokens/s)"
    )
    model = tiny_llama(args.device)
    for kind in ("plt", "clt"):
        measure(model, text, "tiny-llama", kind, list(range(model.cfg.n_layers)), args)
    if args.skip_smollm2:
        return
    if args.random_smollm2:
        model, name = random_smollm2(args.device), "smollm2-shape (random)"
    else:
        try:
            from clew import load_model

            model, name = load_model("smollm2-135m", device=args.device), "smollm2-135m"
        except Exception as err:  # not downloadable here: say so and stop
            print(f"smollm2-135m not available ({type(err).__name__}: {err}); try --random-smollm2")
            return
    layers = list(range(args.smollm2_layers))
    for kind in ("plt", "clt"):
        measure(model, text, name, kind, layers, args)


if __name__ == "__main__":
    main()

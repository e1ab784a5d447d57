"""Feature-store collection speed and memory (``clew features collect``).

    python bench/features.py [--threads 2] [--docs 400] [--baseline-docs 20] [--smol-docs 10] [--whole]

1. **Organism** (its shipped ``clt``): the baseline, measured here, is the scan a user had before this
   feature: one ``ReplacementModel.features()`` call per document (which also decodes, through
   decoders read lazily from disk); then :func:`clew.features.collect` over ``--docs`` documents of the
   organism's corpus. Printed: tokens per second of each, their ratio, and the projected time for the
   organism's whole training corpus (7.37 M tokens) against the floor of 10 minutes.
2. **SmolLM2-135M with a random 2,048-feature JumpReLU PLT on 4 layers** (6, 12, 18, 24; thresholds
   set so about 1% of features fire): collection over 1x, 4x and 16x ``--smol-docs`` documents, each in
   a fresh process: tokens per second and peak resident memory, which must stay flat as the corpus grows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TRAINING_TOKENS = 7_372_800  # the organism's training run (organism.json: model.training.tokens)
SMOL_LAYERS = [6, 12, 18, 24]
N_FEATURES = 2048


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def organism(a: argparse.Namespace) -> None:
    from clew.features import CollectConfig, collect
    from clew.organism.features import OrganismCorpus
    from clew.replacement import ReplacementModel
    from clew.resolve import load_model_and_dictionary

    model, tc = load_model_and_dictionary("organism", None)
    tok = model.tokenizer
    docs = list(itertools.islice(OrganismCorpus().documents(0), a.baseline_docs))
    rm = ReplacementModel(model, tc)
    n, start = 0, time.perf_counter()
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([[tok.bos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]])
            rm.features(ids)
            n += ids.shape[1] - 1
    base = n / (time.perf_counter() - start)
    print(
        f"organism baseline  ReplacementModel.features(), one document a call: {n:,} tokens, {base:,.0f} tokens/s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        n_docs = whole_corpus_docs(tok) if a.whole else a.docs
        cfg = CollectConfig(max_docs=n_docs, threads=a.threads, progress=a.whole)
        wall = time.perf_counter()
        r = collect(model, tc, OrganismCorpus(), Path(tmp) / "s.sqlite", cfg)
        wall = time.perf_counter() - wall
    if a.whole:
        print(
            f"organism whole training corpus: {r.n_docs:,} documents, {r.n_tokens:,} tokens, collected in "
            f"{r.seconds / 60:.1f} min and stored in {wall / 60:.1f} min with {a.threads} threads "
            f"(floor 10 min: {'met' if wall <= 600 else 'NOT met'})"
        )
    rate = r.tokens_per_second
    projected = TRAINING_TOKENS / rate
    print(
        f"organism collect   {r.n_docs:,} documents, {r.n_tokens:,} tokens in {r.seconds:.1f} s: "
        f"{rate:,.0f} tokens/s = {rate / base:.1f}x the baseline"
    )
    per_cpu = r.tokens_per_cpu_second
    print(
        f"organism collect   {r.cpu_seconds:.1f} CPU-seconds (all threads): {per_cpu:,.0f} tokens per CPU-second; "
        f"{a.threads} idle threads scaling perfectly would give {per_cpu * a.threads:,.0f} tokens/s, the whole "
        f"corpus in {TRAINING_TOKENS / (per_cpu * a.threads) / 60:.1f} min (an upper bound, not a measurement)"
    )
    print(
        f"organism projected whole training corpus ({TRAINING_TOKENS / 1e6:.2f} M tokens): {projected / 60:.1f} min "
        f"(floor 10 min: {'met' if projected <= 600 else 'NOT met'})"
    )


def whole_corpus_docs(tok) -> int:
    """How many of the organism corpus's first documents hold :data:`TRAINING_TOKENS` tokens (BOS not
    counted, as the store counts them)."""
    from clew.organism.features import OrganismCorpus

    total = 0
    for i, doc in enumerate(OrganismCorpus().documents(0)):
        total += len(tok(doc, add_special_tokens=False)["input_ids"])
        if total >= TRAINING_TOKENS:
            return i + 1
    return i + 1


def smol_dictionary(model, folder: Path):
    """A random JumpReLU PLT on :data:`SMOL_LAYERS`, thresholds at the 99th percentile of a calibration run."""
    from clew.dictionaries import save_transcoder
    from clew.dictionaries.transcoder import Transcoder, TranscoderConfig
    from clew.features.encode import dictionary_inputs

    if (folder / "config.yaml").exists():
        return folder
    cfg = TranscoderConfig(
        n_layers=model.cfg.n_layers, d_model=model.cfg.d_model, n_features=N_FEATURES, kind="plt",
        activation="jumprelu", layers=SMOL_LAYERS, model_name="smollm2-135m",
    )  # fmt: skip
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(0)
    text = "The capital of the state containing Dallas is Austin. " * 8
    ids = torch.tensor([[model.tokenizer.bos_token_id, *model.tokenizer(text)["input_ids"]]])
    with torch.no_grad():
        inputs = dictionary_inputs(model, tc, ids)  # what the dictionary reads at its layers, no deeper
        for i, layer in enumerate(SMOL_LAYERS):
            x = inputs[layer][0, 1:]
            w = torch.randn(N_FEATURES, cfg.d_model, generator=g) / x.norm(dim=-1).mean()
            tc.W_enc[i] = w
            tc.threshold[i] = (x @ w.T).flatten().quantile(0.99).clamp_min(1e-3)
            tc.W_dec[i].copy_(torch.randn(N_FEATURES, cfg.d_model, generator=g) * 0.05)
    save_transcoder(tc, folder)
    return folder


def smol_worker(a: argparse.Namespace) -> None:
    from clew.dictionaries import load_transcoder
    from clew.features import CollectConfig, collect
    from clew.models.loading import load_folder
    from clew.models.sources import resolve_model_source
    from clew.organism.features import OrganismCorpus

    model = load_folder(resolve_model_source("smollm2-135m"))
    tc = load_transcoder(smol_dictionary(model, Path(a.dictionary)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CollectConfig(max_docs=a.smol_docs, threads=a.threads, progress=False, docs_per_block=16)
        r = collect(model, tc, OrganismCorpus(), Path(tmp) / "s.sqlite", cfg, model_name="smollm2-135m")
    print(json.dumps({"docs": r.n_docs, "tokens": r.n_tokens, "seconds": r.seconds, "peak_mb": peak_mb()}))


def smol(a: argparse.Namespace) -> None:
    work = HERE / ".work" / "features-smol-plt"
    work.parent.mkdir(exist_ok=True)
    rows = []
    for mult in (1, 4, 16):
        argv = [sys.executable, __file__, "--worker", "--smol-docs", str(a.smol_docs * mult)]
        argv += ["--threads", str(a.threads), "--dictionary", str(work)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"smollm2 {mult:>2}x  {r['docs']:>5,} documents {r['tokens']:>7,} tokens: "
            f"{r['tokens'] / r['seconds']:,.0f} tokens/s, peak memory {r['peak_mb']:,.0f} MB "
            f"({r['peak_mb'] / rows[0]['peak_mb']:.2f}x the 1x run)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--docs", type=int, default=400, help="organism documents collected")
    p.add_argument("--baseline-docs", type=int, default=20, help="organism documents for the baseline")
    p.add_argument("--smol-docs", type=int, default=10, help="SmolLM2 documents of the 1x run")
    p.add_argument(
        "--whole",
        action="store_true",
        help="collect the organism's whole training corpus (7.37 M tokens) instead of --docs, and time it",
    )
    p.add_argument("--skip-organism", action="store_true")
    p.add_argument("--skip-smol", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dictionary", help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.worker:
        return smol_worker(a)
    if not a.skip_organism:
        organism(a)
    if not a.skip_smol:
        smol(a)


if __name__ == "__main__":
    main()

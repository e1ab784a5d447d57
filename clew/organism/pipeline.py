"""Building the organism end to end: corpus, tokenizer, model, dictionaries, evaluation, report.

:func:`build` writes one folder: the model as an ordinary Hugging Face folder (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``), its dictionaries in ``clt/``
and ``plt/`` (circuit-tracer's layout), and ``organism.json`` (how it was built and how it scored).
The folder is assembled beside ``out`` and moved into place at the end, so a failed build leaves the
previous one alone. Two presets: the shipped organism, and a miniature one (``tiny``) that builds in
seconds so that a test can keep the whole pipeline honest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clew.errors import ClewError
from clew.models import Transformer
from clew.organism import corpus as corpus_mod
from clew.organism import world
from clew.organism.dictionaries import DictionarySpec, train_dictionaries
from clew.organism.evaluation import FLOORS, ExamScores, examine, greedy_judge
from clew.organism.features import SHIPPED_DOCS, build_stores
from clew.organism.tokenizer import save_tokenizer, single_token_fraction, special_ids, train_tokenizer
from clew.organism.train_model import (
    ModelShape,
    ModelTraining,
    TrainLog,
    hf_config,
    new_model,
    save_model,
    train_model,
)

DEMO_PROMPT = "The capital of the state containing Dallas is"
CPU_TOKENS_PER_SECOND = 9000
"""A generous guess of training speed on a CPU, to size the corpus for a time budget (the corpus is
reused when training turns out faster)."""


@dataclass
class Preset:
    """Everything about a build that is not its seed, output or time budget."""

    name: str
    tokenizer_docs: int
    """Documents the tokenizer is trained on (see :func:`clew.organism.corpus.tokenizer_documents`)."""
    vocab_size: int
    shape: ModelShape
    train: ModelTraining
    n_generated: int
    """Probes per split of the generated tasks (induction, addition)."""
    dictionaries: list[DictionarySpec] = field(default_factory=list)
    min_tokens: int = 0
    """The corpus has at least this many tokens."""
    feature_docs: int = SHIPPED_DOCS
    """Documents of the corpus each dictionary's feature store is collected from (0: no stores)."""
    feature_kinds: tuple[str, ...] = ("clt",)
    """The dictionaries that get a feature store (the CLT alone keeps the package's addition near 12 MB;
    ``clew organism features --dictionary plt`` builds the PLT's)."""


FULL = Preset(
    name="full",
    tokenizer_docs=40_000,
    vocab_size=4096,
    shape=ModelShape(),
    train=ModelTraining(),
    n_generated=200,
    dictionaries=[
        # twice as wide and sparser than the PLT, from its own seed: cities get features of their own
        DictionarySpec("clt", n_features=2048, k=16, steps=700, auxk_alpha=1 / 32, seed_offset=1),
        DictionarySpec("plt", n_features=1024, k=20, steps=450),
    ],
    min_tokens=2_000_000,
)
TINY = Preset(
    name="tiny",
    tokenizer_docs=1500,
    vocab_size=512,
    shape=ModelShape(d_model=64, n_layers=2, n_heads=2, d_head=32, d_mlp=128, n_ctx=256),
    train=ModelTraining(seq_len=128, batch_size=8, lr=3e-3, warmup_steps=10),
    n_generated=16,
    dictionaries=[
        DictionarySpec("clt", n_features=128, k=8, steps=12, batch_size=512, ctx_len=64, eval_contexts=4),
        DictionarySpec("plt", n_features=128, k=8, steps=12, batch_size=512, ctx_len=64, eval_contexts=4),
    ],
    feature_docs=100,
)
TINY_STEPS = 40
FULL_STEPS = 1800
"""The shipped organism's training length: 7.4 M tokens (about 15 minutes on two free CPU cores)."""


@dataclass
class BuildResult:
    folder: Path
    scores: ExamScores
    info: dict[str, Any]
    """What ``organism.json`` holds."""
    report: str
    """The markdown report."""


def _log(message: str) -> None:
    print(f"clew organism: {message}", file=sys.stderr, flush=True)


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that is not new, empty or a previous organism build: a build replaces its
    folder whole, and must never delete what it did not make."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ClewError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "organism.json").is_file():
        raise ClewError(
            f"--out {out}: a folder that holds other files and is not an organism build; "
            "name a new or empty folder"
        )
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents:
        raise ClewError(f"--out {out}: the working folder or one above it; name a new folder")


def build(
    out: str | Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    minutes: float | None = None,
    tiny: bool = False,
    device: str = "cpu",
    dictionaries: bool = True,
    dictionary_features: int | None = None,
    dictionary_steps: int | None = None,
    report_path: str | Path | None = None,
    progress: bool = True,
    checkpoint_every: int = 0,
) -> BuildResult:
    """Build an organism into ``out``.

    The model trains for ``steps`` steps (default: the preset's), or for about ``minutes`` minutes when
    those are given instead. ``dictionary_features`` and ``dictionary_steps`` override the preset's
    transcoders (features per layer, optimiser steps). ``checkpoint_every`` keeps the model every that
    many steps (and before training) as ``checkpoints/step-NNNNN/``, each a loadable model folder."""
    preset = TINY if tiny else FULL
    if steps is None and minutes is None:
        steps = TINY_STEPS if tiny else FULL_STEPS
    if dictionary_features is not None or dictionary_steps is not None:
        specs = [
            replace(
                d,
                n_features=dictionary_features or d.n_features,
                steps=dictionary_steps if dictionary_steps is not None else d.steps,
            )
            for d in preset.dictionaries
        ]
        preset = replace(preset, dictionaries=specs)
    out = Path(out).resolve()
    check_out_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clew-organism-") as work_dir:
        work = Path(work_dir)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            info, scores = _build_into(
                stage,
                work,
                preset,
                seed,
                minutes,
                steps,
                device,
                dictionaries,
                progress,
                times,
                checkpoint_every,
            )
            times["total"] = round(time.perf_counter() - clock, 1)
            info["times_s"] = times
            (stage / "organism.json").write_text(json.dumps(info, indent=1) + "\n")
            check_out_folder(out)  # again: the folder may have changed while the organism trained
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            if out.exists():  # a previous build: set aside, replaced in one rename, then removed
                os.replace(out, old / "previous")
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    report = render_report(info, scores)
    (Path(report_path) if report_path else out.parent / f"{out.name}-report.md").write_text(report)
    return BuildResult(out, scores, info, report)


def _build_into(
    folder: Path,
    work: Path,
    preset: Preset,
    seed: int,
    minutes: float | None,
    steps: int | None,
    device: str,
    with_dictionaries: bool,
    progress: bool,
    times: dict[str, float],
    checkpoint_every: int = 0,
) -> tuple[dict[str, Any], ExamScores]:
    tcfg = ModelTraining(**{**asdict(preset.train), "seed": seed})
    # ---- tokenizer, then a corpus of about as many tokens as training will read
    t = time.perf_counter()
    tok = train_tokenizer(corpus_mod.tokenizer_documents(seed, preset.tokenizer_docs), preset.vocab_size)
    save_tokenizer(tok, folder, preset.shape.n_ctx)
    times["tokenizer"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    writer = corpus_mod.Writer(
        corpus_mod.Split.from_seed(seed), random.Random(f"clew-organism-docs-{seed}"), corpus_mod.Mix()
    )
    docs = [writer.document() for _ in range(2000)]
    per_doc = sum(len(e.ids) for e in tok.encode_batch(docs)) / len(docs)
    budget = minutes or 0.0
    wanted = steps * tcfg.batch_size * tcfg.seq_len if steps else int(budget * 60 * CPU_TOKENS_PER_SECOND)
    wanted = max(wanted, preset.min_tokens, 4 * tcfg.seq_len)
    docs += [writer.document() for _ in range(max(0, int(wanted / per_doc * 1.02) - len(docs)))]
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int32) for e in tok.encode_batch(docs)])
    tokens = torch.from_numpy(ids)
    times["corpus"] = round(time.perf_counter() - t, 1)
    _log(f"corpus: {len(docs):,} documents, {len(tokens):,} tokens; vocabulary {tok.get_vocab_size()}")
    # ---- model
    t = time.perf_counter()
    config = hf_config(preset.shape, tok.get_vocab_size(), special_ids(tok))
    model = new_model(config, seed)
    seconds = None if steps else budget * 60

    def checkpoint(step: int, trained: Transformer) -> None:
        where = folder / "checkpoints" / f"step-{step:05d}"
        save_model(trained, config, where, dtype=torch.float32)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / name, where / name)

    log: TrainLog = train_model(
        model,
        tokens,
        tcfg,
        steps=steps,
        seconds=seconds,
        device=device,
        progress=progress,
        checkpoint_every=checkpoint_every,
        checkpoint=checkpoint,
    )
    save_model(model.cpu(), config, folder)
    times["model"] = round(time.perf_counter() - t, 1)
    _log(f"model: {log.steps} steps, {log.tokens:,} tokens in {log.seconds:.0f} s, loss {log.final_loss:.3f}")
    # ---- evaluation (before the dictionaries: a model that misses its floors shows it at once)
    t = time.perf_counter()
    from clew.models.loading import load_folder

    loaded = load_folder(folder, device=device)
    scores = examine(greedy_judge(loaded, loaded.tokenizer), corpus_mod.probes(seed, preset.n_generated))
    times["evaluation"] = round(time.perf_counter() - t, 1)
    _log(
        "accuracy: "
        + ", ".join(f"{k} {v['train']:.1%}/{v['heldout']:.1%}" for k, v in _summary(scores).items())
    )
    # ---- dictionaries (the hook)
    metrics = None
    if with_dictionaries and preset.dictionaries:
        t = time.perf_counter()
        metrics = train_dictionaries(
            folder,
            docs,
            folder,
            specs=preset.dictionaries,
            work=work,
            seed=seed,
            device=device,
            progress=progress,
        )
        times["dictionaries"] = round(time.perf_counter() - t, 1)
        if preset.feature_docs:  # what each feature means, shipped beside each dictionary
            t = time.perf_counter()
            kinds = tuple(spec.kind for spec in preset.dictionaries)
            build_stores(
                folder, kinds, seed=seed, max_docs=preset.feature_docs, device=device, progress=progress
            )
            times["feature_stores"] = round(time.perf_counter() - t, 1)
    demo = smoke_trace(loaded, folder / "clt") if (folder / "clt" / "config.yaml").is_file() else None
    params = sum(p.numel() for p in model.parameters())
    answers = [s.name for s in world.US_STATES] + [c for c, _ in world.cities()]
    info = {
        "name": "organism",
        "preset": preset.name,
        "seed": seed,
        "rebuild": _rebuild_command(preset, seed, log.steps, device, metrics is not None),
        "model": {
            "parameters": params,
            "shape": asdict(preset.shape),
            "vocab_size": tok.get_vocab_size(),
            "single_token_place_names": round(single_token_fraction(tok, answers), 3),
            "training": {**asdict(tcfg), **log.to_dict(), "device": device, "corpus_tokens": len(tokens)},
        },
        "accuracy": _summary(scores),
        "floors": {f"{task}/{split}": floor for (task, split), floor in FLOORS.items()},
        "below_floors": scores.below_floors(),
        "dictionaries": metrics,
        "demo_trace": demo,
        "files_mb": _sizes(folder),
    }
    return info, scores


def smoke_trace(model, dictionary: Path, prompt: str = DEMO_PROMPT) -> dict[str, Any]:
    """Trace ``prompt`` through the model and its dictionary: proof that the build can be traced, with
    the model's top answer and the size of the graph."""
    from clew.attribution import trace
    from clew.dictionaries import load_transcoder

    tc = load_transcoder(dictionary, device=model.embed.weight.device)
    tc.check_compatible(model.cfg)
    started = time.perf_counter()
    graph = trace(model, tc, prompt, max_n_logits=3, progress=False)
    return {
        "prompt": prompt,
        "top_token": graph.logit_labels[0],
        "top_probability": round(float(graph.logit_probs[0]), 4),
        "features": graph.n_features,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _summary(scores: ExamScores) -> dict[str, dict[str, float]]:
    return {
        task: {split: round(acc, 4) for split, acc in accs.items() if acc is not None}
        for task, accs in scores.summary().items()
    }


def _rebuild_command(preset: Preset, seed: int, steps: int, device: str, dictionaries: bool) -> str:
    parts = ["clew organism build", f"--seed {seed}", f"--steps {steps}"]
    if preset.name == "tiny":
        parts.append("--tiny")
    if not dictionaries:
        parts.append("--no-dictionaries")
    elif preset.dictionaries != (TINY if preset.name == "tiny" else FULL).dictionaries:
        spec = preset.dictionaries[0]
        parts.append(f"--dictionary-features {spec.n_features} --dictionary-steps {spec.steps}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts)


def _sizes(folder: Path) -> dict[str, float]:
    sizes = {"model": 0.0, "clt": 0.0, "plt": 0.0, "other": 0.0}
    for path in folder.rglob("*"):
        if path.is_file():
            part = path.relative_to(folder).parts[0]
            key = part if part in ("clt", "plt") else ("model" if path.suffix == ".safetensors" else "other")
            sizes[key] += path.stat().st_size / 1e6
    sizes["total"] = sum(sizes.values())
    return {k: round(v, 2) for k, v in sizes.items()}


def render_report(info: dict[str, Any], scores: ExamScores) -> str:
    """The markdown report of a build (``docs/organism.md`` for the shipped one)."""
    m, tr = info["model"], info["model"]["training"]
    lines = [
        "# The organism",
        "",
        "clew's own small language model, trained by clew on a corpus whose behaviours were planted, so "
        "that what a trace should find is known. Built with:",
        "",
        f"    {info['rebuild']}",
        "",
        f"A Llama with {m['shape']['n_layers']} layers, width {m['shape']['d_model']}, "
        f"{m['shape']['n_heads']} heads, MLP width {m['shape']['d_mlp']}, vocabulary {m['vocab_size']} "
        f"({m['parameters'] / 1e6:.2f} M parameters), trained for {tr['steps']} steps "
        f"({tr['tokens'] / 1e6:.1f} M tokens, final loss {tr['final_loss']:.3f}) on {tr['device']}. "
        f"{m['single_token_place_names']:.0%} of the place names are single tokens.",
        "",
        "## What it knows",
        "",
        "Each task has a train set (what the corpus teaches) and a held-out set (what it never shows): "
        "two-hop questions about cities that never appear in the two-hop sentence; facts and antonyms in a phrasing the corpus uses, but never for "
        "that fact; induction on invented surnames that no document contains; addition of operand pairs that "
        "never appear. A probe is right "
        "when greedy decoding gives exactly the answer's tokens. ✓/✗: the floor the shipped organism must reach.",
        "",
        scores.markdown(),
        "",
        "Floors: "
        + ", ".join(f"{k} ≥ {v:.0%}" for k, v in info["floors"].items())
        + ". "
        + (
            "All reached."
            if not info["below_floors"]
            else "Not reached: " + "; ".join(info["below_floors"]) + "."
        ),
        "",
    ]
    lines += ["## Dictionaries", ""]
    dicts = info.get("dictionaries")
    if not dicts:
        lines += ["None were trained in this build.", ""]
    else:
        lines += [
            "| dictionary | features/layer | steps | L0/layer | FVU | dead | CE-loss score |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, d in dicts.items():
            lines.append(
                f"| {kind} | {d.get('n_features')} | {d.get('steps')} | {d.get('l0', float('nan')):.1f} | "
                f"{d.get('fvu', float('nan')):.4f} | {d.get('dead_fraction', float('nan')):.1%} | "
                f"{d.get('ce_score', float('nan')):.4f} |"
            )
        lines += ["", "Targets: CE-loss score ≥ 0.95, FVU < 0.05 at L0 ≤ 24 per layer, < 10% dead.", ""]
    demo = info.get("demo_trace")
    if demo:
        lines += [
            f"Tracing {demo['prompt']!r} through the CLT: top answer {demo['top_token']!r} "
            f"(p = {demo['top_probability']:.2f}), {demo['features']} active features, {demo['seconds']:.1f} s.",
            "",
        ]
    times = info.get("times_s", {})
    sizes = info["files_mb"]
    lines += [
        "## Build",
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *[f"| {k} | {v:.0f} |" for k, v in times.items()],
        "",
        f"Files: model {sizes['model']:.1f} MB, CLT {sizes['clt']:.1f} MB, PLT {sizes['plt']:.1f} MB, "
        f"total {sizes['total']:.1f} MB.",
        "",
    ]
    return "\n".join(lines)

"""The organism's dictionaries: a cross-layer transcoder and a set of per-layer transcoders.

HOOK: :func:`train_dictionaries` is where the build hands over to :mod:`clew.training`. It writes the
corpus where the trainer can read it, trains each dictionary with the settings of a
:class:`DictionarySpec`, and keeps only what ships: the transcoder in circuit-tracer's layout (via
:func:`clew.dictionaries.save_transcoder`), in float16, without the trainer's checkpoint. When
:mod:`clew.training` cannot be imported it says so and returns no metrics, and the build goes on
without dictionaries.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class DictionarySpec:
    """One dictionary to train: a few of :class:`clew.training.TrainConfig`'s settings."""

    kind: str
    """``"clt"`` or ``"plt"`` (also the name of its folder)."""
    n_features: int
    activation: str = "batchtopk"
    k: int = 16
    steps: int = 2000
    batch_size: int = 4096
    ctx_len: int = 128
    lr: float | None = None
    eval_contexts: int = 64
    auxk_alpha: float = 0.0
    """Weight of the auxiliary loss that revives features dead for a million tokens (sparsify's AuxK)."""
    seed_offset: int = 0
    """Added to the build's seed, so that two dictionaries of one build start from different weights
    (with one seed the CLT's and the PLT's encoders began alike and stayed alike, index for index)."""

    def train_config(self, model_folder: Path, data: Path, out: Path, seed: int, device: str, progress: bool):
        from clew.training import TrainConfig

        return TrainConfig(
            model=str(model_folder),
            data=str(data),
            out=str(out),
            kind=self.kind,
            activation=self.activation,
            k=self.k,
            n_features=self.n_features,
            ctx_len=self.ctx_len,
            batch_size=self.batch_size,
            buffer_tokens=max(16 * self.batch_size, 65536),
            steps=self.steps,
            lr=self.lr,
            seed=seed + self.seed_offset,
            auxk_alpha=self.auxk_alpha,
            checkpoint_every=0,
            eval_contexts=self.eval_contexts,
            device=device,
            progress=progress,
        )


def write_corpus(documents: Sequence[str], path: Path) -> Path:
    """The documents as ``.jsonl`` (one ``{"text": ...}`` per line), the trainer's input."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for doc in documents:
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def train_dictionaries(
    model_folder: Path,
    corpus: Sequence[str] | Path,
    out: Path,
    *,
    specs: Sequence[DictionarySpec],
    work: Path,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, Any]] | None:
    """Train every dictionary of ``specs`` on the model in ``model_folder`` and the corpus, save each
    in ``out/<kind>``, and return ``{kind: metrics}`` (``None`` when :mod:`clew.training` is missing)."""
    try:
        from clew.training import train
    except ImportError as err:
        print(f"clew organism: no dictionaries: clew.training is not available ({err})", file=sys.stderr)
        return None
    from clew.dictionaries import load_transcoder, save_transcoder
    from clew.models.loading import load_folder

    data = corpus if isinstance(corpus, Path) else write_corpus(corpus, work / "corpus.jsonl")
    model = load_folder(model_folder, device=device)
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        scratch = work / f"train-{spec.kind}"
        shutil.rmtree(scratch, ignore_errors=True)
        result = train(spec.train_config(model_folder, data, scratch, seed, device, progress), model=model)
        tc = load_transcoder(scratch, lazy=False, dtype=torch.float16)
        tc.cfg.model_name = "organism"
        config = tc.cfg.extra.get("training", {}).get("config", {})
        config.update(model="organism", data="the organism's corpus", out=spec.kind, device=None)
        target = out / spec.kind
        shutil.rmtree(target, ignore_errors=True)
        save_transcoder(tc, target)
        metrics = result.metrics.to_dict() if result.metrics is not None else {}
        metrics["n_features"] = spec.n_features
        metrics["steps"] = spec.steps
        metrics["tokens"] = spec.steps * spec.batch_size
        results[spec.kind] = metrics
    return results

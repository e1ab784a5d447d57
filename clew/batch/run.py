"""Tracing a store's prompts: one per-prompt function, run in this process or by workers on Ray.

A :class:`Worker` loads the model and the dictionary once and traces prompt after prompt; for each it
returns the graph file's bytes (exactly what ``Graph.save`` writes) and the numbers of the index row.
The driver (:func:`run_batch`) is the only writer of the store: it adds the prompts, picks those not yet
done, and records each outcome, with one worker in this process or, with ``ray`` or an ``address``,
through :func:`clew.batch.cluster.drive_ray` (workers as Ray actors; imported only on that path). A full
disk stops the run with one line, and the same command resumes it.
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clew.batch.prompts import PromptSpec
from clew.batch.store import GraphStore, disk_full
from clew.dictionaries import Transcoder, load_transcoder
from clew.errors import ClewError
from clew.models import Transformer, load_model


@dataclass
class BatchConfig:
    """What to trace with and how: the same for every prompt of a store."""

    model: str
    """The model as ``clew trace --model`` takes it (a folder, .gguf, hub id or built-in name)."""
    dictionary: str
    """The transcoders' folder (resolved by the command line when the model ships its own)."""
    device: str | None = None
    """cpu or cuda; default: cuda when present."""
    max_n_logits: int = 10
    """Most logit targets."""
    desired_logit_prob: float = 0.95
    """Take top tokens until their probabilities sum to this."""
    max_feature_nodes: int | None = None
    """Budget of feature rows (default: every active feature)."""
    batch_size: int | None = None
    """Targets per backward pass (default: trace's own)."""
    dtype: str = "float32"
    """Attribution precision: float32 or bfloat16."""
    node_threshold: float = 0.8
    """Pruning for the index's counts and scores: influence kept."""
    edge_threshold: float = 0.98
    """Pruning for the index's counts and scores: edge score kept."""
    threads: int | None = None
    """Torch threads per worker (default: 1 on Ray, torch's own in this process). Graphs are bitwise
    equal between runs with the same number of threads; a different number changes float sums."""

    def settings(self) -> dict[str, Any]:
        """What makes two graphs of one prompt differ: a store keeps one value of each."""
        keep = ("max_n_logits", "desired_logit_prob", "max_feature_nodes", "batch_size", "dtype")
        return {k: getattr(self, k) for k in keep}


@dataclass
class Outcome:
    """What a worker hands back for one prompt."""

    id: str
    """The prompt's id."""
    worker: str
    """host:pid of the worker."""
    result: dict[str, Any] = field(default_factory=dict)
    """The index row's numbers (empty when the prompt failed)."""
    data: bytes | None = None
    """The graph file's bytes."""
    error: str | None = None
    """Why the prompt could not be traced (a user mistake in it: a bad target, too many tokens)."""


def fingerprint(module: torch.nn.Module, extra: str) -> str:
    """A hash of a strided sample (about 4,096 values) of every parameter and of ``extra`` (the config):
    cheap, and different for any two models or dictionaries a user could mix up."""
    h = hashlib.sha256(extra.encode())
    for name, p in sorted(module.named_parameters()):
        flat = p.detach().flatten()
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class Worker:
    """Loads the model and the dictionary once; traces prompts one after another."""

    def __init__(self, config: BatchConfig, threads: int | None = None):
        self.config = config
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.model: Transformer = load_model(config.model, device=config.device)
        weight = self.model.embed.weight
        self.transcoder: Transcoder = load_transcoder(
            config.dictionary, device=weight.device, dtype=weight.dtype
        )
        self.transcoder.check_compatible(self.model.cfg)
        dec = self.transcoder.decoder_vectors(
            self.transcoder.layers[0], torch.arange(4), self.transcoder.layers[0]
        )
        self._identity = {
            "model": config.model,
            "dictionary": config.dictionary,
            "model_fingerprint": fingerprint(self.model, repr(self.model.cfg)),
            "dictionary_fingerprint": fingerprint(
                self.transcoder,
                repr(self.transcoder.cfg.to_dict()) + dec.float().cpu().numpy().tobytes().hex(),
            ),
        }
        self._tmp = tempfile.mkdtemp(prefix="clew-worker-")

    def identity(self) -> dict[str, str]:
        return self._identity

    def pid(self) -> int:
        return os.getpid()

    def trace(self, spec: PromptSpec) -> Outcome:
        return trace_one(self.model, self.transcoder, spec, self.config, self._tmp, self.name, self.threads)


def trace_one(
    model: Transformer,
    transcoder: Transcoder,
    spec: PromptSpec,
    config: BatchConfig,
    tmp_dir: str,
    worker: str = "",
    threads: int = 0,
) -> Outcome:
    """Trace one prompt as ``clew trace`` would, prune and score it once, and serialise the graph."""
    from clew.attribution import analyze, trace

    started = time.perf_counter()
    try:
        graph = trace(
            model,
            transcoder,
            spec.prompt,
            targets=list(spec.targets) or None,
            contrast=spec.contrast,
            max_n_logits=config.max_n_logits,
            desired_logit_prob=config.desired_logit_prob,
            max_feature_nodes=config.max_feature_nodes,
            batch_size=config.batch_size,
            dtype=getattr(torch, config.dtype),
            progress=False,
        )
    except ClewError as err:
        return Outcome(spec.id, worker, error=str(err))
    except (RuntimeError, ValueError, MemoryError) as err:  # out of memory on one long prompt, say
        text = " ".join(str(err).split())[:300]
        return Outcome(spec.id, worker, error=f"{type(err).__name__}: {text}")
    analysis = analyze(graph, config.node_threshold, config.edge_threshold)
    path = Path(tmp_dir) / f"{os.getpid()}.safetensors"
    graph.save(path)
    data = path.read_bytes()
    path.unlink()
    pruned = analysis.pruned
    result = {
        "worker": worker,
        "n_tokens": graph.n_pos,
        "n_active": graph.settings.get("n_active_features"),
        "n_features": graph.n_features,
        "n_edges": int((graph.adjacency != 0).sum()),
        "n_pruned_features": int(pruned.node_mask[: graph.n_features].sum()),
        "n_pruned_edges": int(pruned.edge_mask.sum()),
        "logit_labels": graph.logit_labels,
        "top_token": graph.logit_labels[0] if graph.logit_labels else None,
        "top_prob": float(graph.logit_probs[0]) if graph.n_logits else None,
        "replacement": analysis.scores.replacement,
        "completeness": analysis.scores.completeness,
        "pruned_replacement": analysis.pruned_scores.replacement,
        "pruned_completeness": analysis.pruned_scores.completeness,
        "seconds": graph.settings.get("seconds"),
        "worker_seconds": round(time.perf_counter() - started, 4),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads or torch.get_num_threads(),
        "finished": time.time(),
    }
    return Outcome(spec.id, worker, result, data)


# --- the drivers ------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What a run did."""

    traced: int = 0
    """Graphs written by this run."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(id, why) of prompts that could not be traced."""
    skipped: int = 0
    """Prompts already done before this run."""
    workers_lost: int = 0
    """Workers that died during the run (their prompts went to others)."""
    seconds: float = 0.0
    """Wall time of the run, loading included."""
    startup_seconds: float = 0.0
    """Until every worker had loaded the model and dictionary."""
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    """Each worker's peak resident memory."""


Hook = Callable[[Outcome], None]


def run_batch(
    store: GraphStore,
    specs: list[PromptSpec],
    config: BatchConfig,
    *,
    ray: bool = False,
    address: str | None = None,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_attempts: int = 3,
    retry_failed: bool = False,
    progress: bool = True,
    on_outcome: Hook | None = None,
) -> RunReport:
    """Trace every prompt of ``specs`` not yet done in ``store``: in this process, or on Ray (a local
    cluster of ``workers`` processes, or the cluster at ``address``)."""
    report = RunReport()
    try:
        return _run(
            store,
            specs,
            config,
            ray,
            address,
            workers,
            cpus_per_worker,
            gpus_per_worker,
            max_attempts,
            retry_failed,
            progress,
            on_outcome,
            report,
        )
    except (OSError, sqlite3.OperationalError) as err:
        if disk_full(err):
            raise ClewError(
                f"{store.root}: the disk is full ({report.traced} graphs written by this run); "
                "free some space and rerun the same command: it resumes where it stopped"
            ) from None
        raise


def _run(
    store: GraphStore,
    specs: list[PromptSpec],
    config: BatchConfig,
    ray: bool,
    address: str | None,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    max_attempts: int,
    retry_failed: bool,
    progress: bool,
    on_outcome: Hook | None,
    report: RunReport,
) -> RunReport:
    started = time.perf_counter()
    store.check_settings(config.settings())
    store.recover()
    store.add(specs)
    wanted = {s.id for s in specs}
    todo = [s for s in store.todo(retry_failed) if s.id in wanted]
    report.skipped = len(specs) - len(todo)
    bar = tqdm(total=len(specs), initial=report.skipped, desc="graphs", unit="graph", disable=not progress)

    def take(out: Outcome) -> None:
        if out.error is not None:
            store.fail(out.id, out.error, out.worker)
            report.failed.append((out.id, out.error))
        else:
            store.record(out.id, out.result, out.data or b"")
            report.traced += 1
            report.peak_rss_mb[out.worker] = out.result["peak_rss_mb"]
        bar.update(1)
        if on_outcome is not None:
            on_outcome(out)

    try:
        if todo:
            if ray or address:
                from clew.batch.cluster import drive_ray  # here: the cluster module imports this one

                drive_ray(
                    store,
                    todo,
                    config,
                    address,
                    workers,
                    cpus_per_worker,
                    gpus_per_worker,
                    max_attempts,
                    take,
                    report,
                    bar,
                )
            else:
                _drive_here(store, todo, config, take, report)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _drive_here(
    store: GraphStore, todo: list[PromptSpec], config: BatchConfig, take: Hook, report: RunReport
) -> None:
    t = time.perf_counter()
    worker = Worker(config, config.threads)
    store.claim(worker.identity(), config.settings())
    report.startup_seconds = time.perf_counter() - t
    for spec in todo:
        take(worker.trace(spec))

"""Collecting a feature store: run a model and its dictionary's encoders over a corpus, keep per feature
its top contexts, a uniform sample of its non-zero activations, its statistics and histogram.

The parts, each in its own module:

- :mod:`clew.features.config`: the settings (:class:`CollectConfig`).
- :mod:`clew.features.contexts`: documents cut into contexts, a block's contexts into batches.
- :mod:`clew.features.encode`: the dictionary's encoders run on a batch (the model no deeper than needed).
- :mod:`clew.features.state`: the per-layer state of bounded size, and a batch found and folded into it.
- :mod:`clew.features.records`: the finished state as per-feature records, with logit effects.

This module runs the loop, and why its result does not depend on where a run was killed:

1. Documents are read in *blocks* of ``docs_per_block``, and each block is cut into contexts and
   batches (:mod:`clew.features.contexts`). The batches are found in worker threads but folded into the
   state one by one, in corpus order.
2. After a block, and at most every ``checkpoint_seconds``, the whole state is written into the
   store's ``state`` table with the number of documents done. A resumed run skips those documents and
   continues with the same blocks, batches and state: it computes exactly what the uninterrupted run did.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.errors import ClewError
from clew.features.config import CollectConfig
from clew.features.contexts import Batch, Corpus, batches, block_contexts
from clew.features.encode import dictionary_inputs, encode_active
from clew.features.records import feature_records
from clew.features.state import Found, LayerState, find, fold
from clew.features.store import FeatureStore
from clew.models import Transformer


def fingerprint(tc: Transcoder) -> str:
    """A short hash that identifies a dictionary: its configuration, biases, thresholds and the first
    rows of every encoder (enough to tell two dictionaries apart without hashing gigabytes)."""
    h = hashlib.sha256(
        json.dumps({k: v for k, v in tc.cfg.to_dict().items() if k != "extra"}, sort_keys=True).encode()
    )
    for t in (tc.W_enc[:, :64], tc.b_enc, tc.threshold, tc.b_dec):
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class CollectResult:
    path: Path
    n_docs: int
    n_contexts: int
    n_tokens: int
    seconds: float
    resumed: bool
    cpu_seconds: float = 0.0
    """Processor time of the collection loop, all threads together (a rate per CPU-second is steadier
    than wall time on a shared machine)."""

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.n_tokens / self.cpu_seconds if self.cpu_seconds else 0.0


def collect(
    model: Transformer,
    tc: Transcoder,
    corpus: Corpus,
    out: str | Path,
    cfg: CollectConfig | None = None,
    *,
    model_name: str | None = None,
    dictionary_name: str | None = None,
    on_block: Callable[[int], None] | None = None,
) -> CollectResult:
    """Collect the feature store of ``tc`` on ``model`` over ``corpus`` into ``out`` (an SQLite file).

    The store is built in ``out.partial`` and renamed to ``out`` when complete; if ``out.partial``
    exists (a killed run), collection resumes from its last checkpoint. ``on_block(docs_done)`` is
    called after every block (tests use it to stop a run).
    """
    from clew.features.labels import auto_labels

    cfg = cfg or CollectConfig()
    cfg.check()
    out = Path(out)
    if out.exists() and not out.is_file():
        raise ClewError(f"{out}: not a file")
    tc.check_compatible(model.cfg)
    from clew.models.loading import pick_device

    device = pick_device(cfg.device)  # CUDA when present; an unknown or absent device is a one-line error
    threads = cfg.threads or os.cpu_count() or 1
    workers = threads if device.type == "cpu" else 1
    if device.type == "cpu":
        torch.set_num_threads(1 if workers > 1 else threads)
    if cfg.batch_tokens is None:
        cfg.batch_tokens = 32768 if device.type == "cuda" else 4096
    model.to(device)
    tc.to(device)
    tok = model.tokenizer
    if tok is None:
        raise ClewError(f"{model.name}: the model has no tokenizer; collecting needs one to read text")
    F = tc.cfg.n_features
    settings = cfg.result_settings()
    meta = {
        "model": model_name or model.name,
        "dictionary": dictionary_name or tc.source,
        "dictionary_fingerprint": fingerprint(tc),
        "dictionary_kind": tc.cfg.kind,
        "layers": tc.layers,
        "n_features": F,
        "corpus": corpus.name,
        "settings": settings,
        "hist_edges": [float(x) for x in np.geomspace(cfg.hist_lo, cfg.hist_hi, cfg.hist_bins - 1)],
        "complete": False,
    }
    partial = out.with_name(out.name + ".partial")
    resumed = partial.exists()
    if resumed:
        store = FeatureStore(partial, _open_partial(partial))
        for key in ("dictionary_fingerprint", "settings", "corpus", "layers", "n_features"):
            if store.meta.get(key) != meta[key]:
                store.close()
                raise ClewError(
                    f"{partial}: an unfinished collection with another {key.replace('_', ' ')}; delete it "
                    "or collect with the same settings"
                )
    else:
        store = FeatureStore.create(partial, meta)
    edges = torch.tensor(meta["hist_edges"], device=device, dtype=torch.float32)
    states = {layer: LayerState(F, cfg, device) for layer in tc.layers}
    progress = {"docs": 0, "contexts": 0, "tokens": 0, "seconds": 0.0, "cpu_seconds": 0.0, "vocab": []}
    if resumed and store.get_state("progress") is not None:
        progress = json.loads(store.get_state("progress") or b"{}")
        for layer, st in states.items():
            st.load({n: store.get_state(f"{layer}.{n}") or b"" for n in LayerState.NAMES})
    seen_tokens: set[int] = set(progress["vocab"])

    def checkpoint() -> None:
        blobs = {f"{layer}.{n}": b for layer, st in states.items() for n, b in st.to_bytes().items()}
        progress["vocab"] = sorted(seen_tokens)
        blobs["progress"] = json.dumps(progress).encode()
        store.put_state(blobs)

    bar = _bar(cfg, progress["tokens"])
    start, last_save = time.perf_counter(), time.perf_counter()
    base_seconds, base_cpu = progress["seconds"], progress.get("cpu_seconds", 0.0)
    cpu_start = time.process_time()
    docs = corpus.documents(progress["docs"])
    boundary = True  # the state holds whole blocks only: a checkpoint here resumes exactly
    try:
        while cfg.max_docs is None or progress["docs"] < cfg.max_docs:
            want = cfg.docs_per_block
            if cfg.max_docs is not None:
                want = min(want, cfg.max_docs - progress["docs"])
            block = [d for _, d in zip(range(want), docs)]
            if not block:
                break
            boundary = False
            ctxs = block_contexts(tok, block, cfg.ctx_len)
            block_tokens = 0
            todo = batches(ctxs, progress["contexts"], cfg.batch_tokens)
            for batch, acts, found in _found(model, tc, todo, states, cfg, edges, device, workers):
                seen_tokens.update(batch.tokens.unique().tolist())
                for layer, a in acts.items():
                    fold(states[layer], found[layer], a, batch, cfg)
                n = int((batch.lengths - 1).clamp(min=0).sum())
                block_tokens += n
                if bar is not None:
                    bar.update(n)
            progress["tokens"] += block_tokens
            progress["docs"] += len(block)
            progress["contexts"] += len(ctxs)
            progress["seconds"] = base_seconds + time.perf_counter() - start
            progress["cpu_seconds"] = base_cpu + time.process_time() - cpu_start
            boundary = True
            if time.perf_counter() - last_save >= cfg.checkpoint_seconds:
                checkpoint()
                last_save = time.perf_counter()
            if on_block is not None:
                on_block(progress["docs"])
        if progress["tokens"] == 0:
            raise ClewError(f"{corpus.name}: the corpus has no text (no tokens to collect from)")
        if bar is not None:
            bar.close()
        if device.type == "cpu":
            torch.set_num_threads(threads)  # the logit effects are a few large products
        records = feature_records(model, tc, states, progress["tokens"], cfg)
        texts = _texts(tok, seen_tokens | {t for r in records for t, _ in r.top_logits + r.bottom_logits})
        store.put_vocab(texts)
        store.put_features(records, cfg.width)
        store.put_labels(auto_labels(records, texts), "auto")
        store.clear_state()
        store.set_meta(
            complete=True,
            n_docs=progress["docs"],
            n_contexts=progress["contexts"],
            n_tokens=progress["tokens"],
            created=int(time.time()),
        )
    except BaseException:
        if bar is not None:
            bar.close()
        if boundary and not store.meta.get("complete") and progress["tokens"]:  # else: the last checkpoint
            try:
                checkpoint()
            except Exception:
                pass
        store.close()
        raise
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    os.replace(partial, out)
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    return CollectResult(
        out,
        progress["docs"],
        progress["contexts"],
        progress["tokens"],
        progress["seconds"],
        resumed,
        progress.get("cpu_seconds", 0.0),
    )


def _found(
    model: Transformer,
    tc: Transcoder,
    todo: list[Batch],
    states: dict[int, LayerState],
    cfg: CollectConfig,
    edges: Tensor,
    device: torch.device,
    workers: int,
) -> Iterator[tuple[Batch, dict[int, Tensor], dict[int, Found]]]:
    """Each batch with its activations (:func:`encode_active`) and what it holds (:func:`find`), in
    order. With ``workers`` > 1 that many batches are worked on at once in threads (torch releases
    the interpreter lock in its kernels), at most one more waiting, so memory holds a few batches
    whatever the block; only :func:`fold` is left to the caller, in order."""

    @torch.inference_mode()
    def job(batch: Batch, limits: dict[int, Tensor]) -> tuple[dict[int, Tensor], dict[int, Found]]:
        inputs = dictionary_inputs(model, tc, batch.tokens.to(device))
        acts, found = {}, {}
        for layer in tc.layers:  # each layer's activations searched while they are still in the cache
            acts[layer], active = encode_active(tc, layer, inputs.pop(layer))
            found[layer] = find(acts[layer], batch, layer, cfg, edges, limits[layer], active)
        return acts, found

    def limits() -> dict[int, Tensor]:  # read when a job is sent: any earlier value is safe (it only falls)
        return {layer: st.rnd_pri.amax(1) for layer, st in states.items()}

    if workers <= 1:
        for batch in todo:
            yield batch, *job(batch, limits())
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="clew-collect") as pool:
        pending: deque = deque()
        for batch in todo:
            pending.append((batch, pool.submit(job, batch, limits())))
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()


def _open_partial(path: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _bar(cfg: CollectConfig, initial: int) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(desc="collecting", unit="tok", unit_scale=True, initial=initial, dynamic_ncols=True)


def _texts(tok: Any, ids: set[int]) -> dict[int, str]:
    return {int(i): tok.decode([int(i)]) for i in sorted(ids) if i >= 0}

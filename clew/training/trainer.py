"""The training loop: data, optimiser, schedules, checkpoints, progress, and the final save.

``train(cfg)`` does it all; :class:`Trainer` exposes the steps (``train(until=...)`` stops early and
checkpoints, which the resume test uses). Run under ``torchrun`` for several processes: each reads its
own data shards, DistributedDataParallel averages the gradients, and the losses are normalised by
global counts so that the result equals a single process trained on the same global batches.

A checkpoint (``checkpoint.pt`` in ``cfg.out``) holds the parameters, Adam's state, the step, the
dead-feature counters, the data position (the start of the block being served and the next batch in
it) and the random-number generators' states; resuming from it continues bit for bit.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clew.allocator import keep_freed_memory
from clew.dictionaries import Transcoder, save_transcoder
from clew.errors import ClewError
from clew.files import replacing, write_atomic
from clew.training import dist
from clew.training.config import TrainConfig
from clew.training.data import ActivationStream, StreamState, open_text
from clew.training.metrics import Metrics, evaluate
from clew.training.module import TrainingTranscoder

CHECKPOINT = "checkpoint.pt"
RUN_FIELDS = {"out", "resume", "checkpoint_every", "eval_contexts", "eval_per_layer", "device", "progress"}
"""Fields that may differ between a checkpoint's run and the run that resumes it."""


@dataclass
class TrainResult:
    transcoder: Transcoder
    """The trained dictionary, on raw activations."""
    metrics: Metrics | None
    """The final evaluation (``None`` when skipped, and on processes other than rank 0)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per step: ``step``, ``loss``, ``fvu``, ``l0``, ``dead``, ``lr``, ``lambda`` and the loss's parts."""


class Trainer:
    def __init__(self, cfg: TrainConfig, model: Any = None):
        """``model``: an already loaded :class:`~clew.models.Transformer` with a tokenizer (else
        ``cfg.model`` is loaded)."""
        self.cfg = cfg
        self.device = dist.setup(cfg.device)
        self.rank, self.world = dist.rank(), dist.world()
        if cfg.data_shards % self.world:
            raise ClewError(f"data_shards {cfg.data_shards} is not a multiple of the {self.world} processes")
        source = open_text(cfg.data, text_field=cfg.text_field, split=cfg.split)  # bad paths fail early
        if model is None:
            from clew.models import load_model

            model = load_model(cfg.model, device=self.device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if getattr(model, "tokenizer", None) is None:
            raise ClewError(f"{cfg.model}: the model has no tokenizer to turn the text into tokens")
        mcfg = model.cfg
        layers = sorted(set(cfg.layers)) if cfg.layers is not None else list(range(mcfg.n_layers))
        if not layers or layers[0] < 0 or layers[-1] >= mcfg.n_layers:
            raise ClewError(f"layers {cfg.layers} fall outside the model's {mcfg.n_layers} layers")
        self.layers = layers
        self.module = TrainingTranscoder(cfg, layers, mcfg.n_layers, mcfg.d_model, seed=cfg.seed).to(
            self.device
        )
        self.lr = cfg.learning_rate(self.module.n_features)
        self.optim = adam(self.module.parameters(), self.lr)
        self.step = 0
        self.since_fired = torch.zeros(
            len(layers), self.module.n_features, dtype=torch.long, device=self.device
        )
        self.history: list[dict[str, float]] = []
        self.out = Path(cfg.out)
        stream_state = self._resume() if cfg.resume and (self.out / CHECKPOINT).is_file() else None
        self.stream = ActivationStream(
            self.model,
            source,
            model.tokenizer,
            layers=layers,
            read=cfg.read,
            write=cfg.write,
            ctx_len=cfg.ctx_len,
            batch_size=cfg.batch_size,
            buffer_tokens=cfg.buffer_tokens,
            n_shards=cfg.data_shards,
            shards=list(range(self.rank, cfg.data_shards, self.world)),
            model_batch=cfg.model_batch,
            skip_bos=cfg.skip_bos,
            seed=cfg.seed,
            device=self.device,
            state=stream_state,
        )
        if stream_state is None:
            self.module.init_from_data(*self.stream.peek())
        self.ddp: torch.nn.Module | None = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.module, device_ids=ids)

    # ----- schedules ------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """Linear warm-up from 0, constant, then linear decay to 0 over the last ``lr_decay`` of the steps."""
        cfg, total = self.cfg, max(self.cfg.steps, 1)
        warm, decay = cfg.lr_warmup * total, cfg.lr_decay * total
        factor = 1.0
        if warm > 0 and step < warm:
            factor = min(1.0, (step + 1) / warm)
        if decay > 0 and step >= total - decay:
            factor = min(factor, (total - step) / decay)
        return self.lr * factor

    def sparsity_at(self, step: int) -> float:
        """lambda, rising linearly from 0 over the first ``sparsity_warmup`` of the steps."""
        ramp = self.cfg.sparsity_warmup * max(self.cfg.steps, 1)
        return self.cfg.sparsity * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    # ----- the loop -----------------------------------------------------------------------------------

    def train(self, until: int | None = None) -> None:
        """Run steps up to ``until`` (default: ``cfg.steps``); checkpoint at the end and every
        ``checkpoint_every`` steps."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not cfg.progress or self.rank != 0,
            desc=f"train {cfg.kind}/{cfg.activation}",
            file=sys.stderr,
            dynamic_ncols=True,
        )
        while self.step < until:
            record = self._step()
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['loss']:.4g}",
                l0=f"{record['l0']:.1f}",
                fvu=f"{record['fvu']:.3f}",
                dead=f"{record['dead']:.1%}",
                refresh=False,
            )
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < until:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()

    def _step(self) -> dict[str, float]:
        cfg = self.cfg
        x, y = self.stream.next_batch()
        lr, sparsity = self.lr_at(self.step), self.sparsity_at(self.step)
        for group in self.optim.param_groups:
            group["lr"] = lr
        dead = self.since_fired >= cfg.dead_tokens
        out = (self.ddp or self.module)(x, y, sparsity, dead)
        self.optim.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optim.step()
        with torch.no_grad():  # this process's shares of the statistics, summed over the processes
            fired = dist.sum_(out.fired.to(torch.int32)) > 0  # [n, F]
            n, names = len(self.layers), list(out.parts)
            count = torch.tensor([float(x.shape[0])], device=x.device)
            losses = torch.stack([out.loss.detach() / self.world, *out.parts.values()])
            sums = dist.sum_(torch.cat([out.sse, out.active, count, losses]))
            sse, active, tokens, losses = sums[:n], sums[n : 2 * n], sums[2 * n], sums[2 * n + 1 :]
            self.since_fired += int(tokens.item())
            self.since_fired[fired] = 0
        self.step += 1
        record = {
            "step": float(self.step),
            "loss": losses[0].item(),
            "fvu": (sse.sum() / out.sst.sum()).item(),
            "l0": (active.sum() / tokens / n).item(),
            "dead": (self.since_fired >= cfg.dead_tokens).float().mean().item(),
            "lr": lr,
            "lambda": sparsity,
            **{name: v.item() for name, v in zip(names, losses[1:])},
        }
        self.history.append(record)
        return record

    # ----- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0, atomically) with everything needed to continue exactly."""
        shards: dict[int, Any] = {}
        for part in dist.gather_objects(self.stream.state().to_dict()):
            shards.update(part["shards"])
        state = self.stream.state().to_dict() | {"shards": shards}
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            payload = {
                "config": self.cfg.to_dict(),
                "step": self.step,
                "module": self.module.state_dict(),
                "optim": self.optim.state_dict(),
                "since_fired": self.since_fired.cpu(),
                "stream": state,
                "rng": rng,
                "history": self.history,
                "world": self.world,
            }
            with replacing(self.out / CHECKPOINT) as tmp:
                torch.save(payload, tmp)
        dist.barrier()

    def _resume(self) -> StreamState:
        path = self.out / CHECKPOINT
        try:
            # weights_only: tensors, numbers, strings and containers only; a pickled object in a planted
            # checkpoint is refused before anything of it runs
            payload = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise ClewError(f"{path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None
        saved, now = payload["config"], self.cfg.to_dict()
        differ = sorted(k for k in now if k not in RUN_FIELDS and saved.get(k) != now[k])
        if differ:
            raise ClewError(f"{path}: the checkpoint was made with other settings of {', '.join(differ)}")
        self.module.load_state_dict(payload["module"])
        self.optim.load_state_dict(payload["optim"])
        self.step = int(payload["step"])
        self.since_fired = payload["since_fired"].to(self.device)
        self.history = list(payload.get("history", []))
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng"]["cuda"]])
        return StreamState.from_dict(payload["stream"])

    # ----- the result -------------------------------------------------------------------------------

    def transcoder(self) -> Transcoder:
        """The current dictionary on raw activations (normalisation folded into the weights)."""
        return self.module.export(
            model_name=getattr(self.model, "name", None) or self.cfg.model,
            extra={
                "training": {
                    "config": self.cfg.to_dict(),
                    "steps_done": self.step,
                    "tokens_seen": self.step * self.cfg.batch_size,
                }
            },
        )

    def finish(self) -> TrainResult:
        """Export, evaluate and save the transcoder (rank 0); print the evaluation table."""
        tc = self.transcoder()
        metrics = None
        if self.rank == 0:
            if self.cfg.eval_contexts > 0:
                tokens = self.stream.eval_tokens(self.cfg.eval_contexts)
                metrics = evaluate(
                    self.model,
                    tc,
                    tokens,
                    batch_size=self.cfg.model_batch,
                    skip_first=self.stream.drop_first,
                    per_layer_ce=self.cfg.eval_per_layer,
                )
                tc.cfg.extra["metrics"] = {
                    "l0": metrics.l0,
                    "fvu": metrics.fvu,
                    "dead_fraction": metrics.dead_fraction,
                    "ce_score": metrics.ce_score,
                    "eval_tokens": metrics.n_tokens,
                }
            save_transcoder(tc, self.out)
            report = {"metrics": metrics.to_dict() if metrics else None, "history": self.history}
            write_atomic(self.out / "metrics.json", json.dumps(report, indent=1))
        dist.barrier()
        return TrainResult(tc, metrics, list(self.history))


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch has it (several times faster on a CPU)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def train(cfg: TrainConfig, model: Any = None) -> TrainResult:
    """Train a transcoder as ``cfg`` says, save it in ``cfg.out``, and evaluate it."""
    keep_freed_memory()
    trainer = Trainer(cfg, model)
    trainer.train()
    return trainer.finish()

"""Training the organism's language model with clew's own transformer, saved as a Hugging Face folder.

The model is a small Llama (``transformers.LlamaConfig``): trained here as a
:class:`clew.models.transformer.Transformer` built from that configuration, then written as an ordinary
folder (``config.json``, ``model.safetensors`` with Hugging Face tensor names, tokenizer files) that
``transformers.AutoModelForCausalLM`` and :func:`clew.models.loading.load_folder` both read unchanged.

Training: random windows of the token stream, AdamW, linear warm-up then a cosine decay, a fixed seed.
The length is a number of steps, or a time budget: the speed of the first steps sets the number of
steps that fit, and that number is then fixed (and reported, to rebuild with ``steps=``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from clew.allocator import keep_freed_memory
from clew.models.config import ModelConfig
from clew.models.transformer import Transformer


@dataclass
class ModelShape:
    """The organism's architecture knobs (everything else is Llama's)."""

    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    d_head: int = 32
    d_mlp: int = 768
    n_ctx: int = 256
    tie_embeddings: bool = False


@dataclass
class ModelTraining:
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_fraction: float = 0.1
    """The learning rate decays to this fraction of ``lr`` by the last step."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    calibration_steps: int = 10
    """With a time budget, the steps timed (after two to warm up) to decide how many fit."""


@dataclass
class TrainLog:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, smoothed loss) every few steps."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hf_config(shape: ModelShape, vocab_size: int, special: dict[str, int], dtype: str = "float16"):
    """The ``transformers.LlamaConfig`` of the organism."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        head_dim=shape.d_head,
        max_position_embeddings=shape.n_ctx,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
        dtype=dtype,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def new_model(config, seed: int) -> Transformer:
    """A freshly initialised clew transformer for a Hugging Face config: normal(0, 0.02) weights,
    residual-stream writers scaled down by ``sqrt(2 * n_layers)``, unit norms."""
    cfg = ModelConfig.from_hf(config.to_dict())
    torch.manual_seed(seed)
    model = Transformer(cfg)
    std = 0.02
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                p.fill_(1.0)
            elif name.endswith(("attn.o.weight", "mlp.down.weight")):
                p.normal_(0.0, std / math.sqrt(2 * cfg.n_layers))
            else:
                p.normal_(0.0, std)
    return model


def _lr(step: int, total: int, cfg: ModelTraining) -> float:
    warm = min(cfg.warmup_steps, max(1, total // 10))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (
        cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def train_model(
    model: Transformer,
    tokens: Tensor,
    cfg: ModelTraining,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_every: int = 0,
    checkpoint: Callable[[int, Transformer], None] | None = None,
) -> TrainLog:
    """Train ``model`` in place on windows of the 1-D token stream ``tokens``, for ``steps`` steps or
    as many as fit in ``seconds``. With ``checkpoint_every``, ``checkpoint(step, model)`` is called
    at step 0 (before training) and every that many steps (the model in eval mode meanwhile)."""
    if (steps is None) == (seconds is None):
        raise ValueError("give exactly one of steps and seconds")
    keep_freed_memory()
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    L, B = cfg.seq_len, cfg.batch_size
    offsets = torch.arange(L + 1)
    total = steps if steps is not None else 10**9  # with a time budget: set once the first steps are timed
    bar = tqdm(total=steps, desc="organism", unit="step", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    timer_start, smooth, losses = started, None, []
    step = 0

    def keep() -> None:
        if checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
            model.eval()
            checkpoint(step, model)
            model.train()

    keep()
    while step < total:
        starts = torch.randint(0, len(tokens) - L - 1, (B,), generator=gen)
        batch = tokens[starts[:, None] + offsets].to(device=device, dtype=torch.long)
        for group in opt.param_groups:
            group["lr"] = _lr(step, total, cfg)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        keep()
        bar.update(1)
        value = loss.item()
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 25 == 0 or step == total:
            losses.append((step, round(smooth, 4)))
        if seconds is not None and step == 2:
            timer_start = time.perf_counter()
        if seconds is not None and step == 2 + cfg.calibration_steps:
            per_step = (time.perf_counter() - timer_start) / cfg.calibration_steps
            left = seconds - (time.perf_counter() - started)
            total = max(step + 1, step + int(left / per_step))
            bar.reset(total=total)
            bar.update(step)
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{smooth:.3f}", tok_s=f"{step * B * L / elapsed:,.0f}", refresh=False)
    bar.close()
    model.eval()
    return TrainLog(
        step, step * B * L, round(time.perf_counter() - started, 1), round(smooth or 0.0, 4), losses
    )


def hf_state_dict(model: Transformer, dtype: torch.dtype) -> dict[str, Tensor]:
    """The model's weights under Hugging Face Llama tensor names."""
    from clew.models.loading import weight_table

    table = weight_table(model.cfg, {"model.embed_tokens.weight", "lm_head.weight"})
    out = {}
    for name, p in model.state_dict().items():
        if model.cfg.tie_embeddings and name == "unembed.weight":
            continue
        out[table[name][0]] = p.detach().to("cpu", dtype).contiguous()
    return out


def save_model(model: Transformer, config, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write ``config.json`` and ``model.safetensors`` (tensors in ``dtype``) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(str(folder))
    save_file(hf_state_dict(model, dtype), str(folder / "model.safetensors"), metadata={"format": "pt"})

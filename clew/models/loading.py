"""Loading a Hugging Face folder into clew's transformer: the weight-name table and the safetensors reader.

``load_model`` accepts anything ``clew.models.sources.resolve_model_source`` understands (a local folder,
a ``.gguf`` file, a hub id, a built-in name) and returns a :class:`Transformer` with its tokenizer.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.files import contained, load_json
from clew.models.config import ModelConfig
from clew.models.transformer import Transformer

Transform = Callable[[Tensor], Tensor]


def _same(t: Tensor) -> Tensor:
    return t


def _rows(i: int, n: int, transpose: bool) -> Transform:
    """Take the i-th of n equal chunks along the output dimension of a (possibly Conv1D) weight."""

    def take(t: Tensor) -> Tensor:
        t = t.T if transpose and t.dim() == 2 else t
        return t.chunk(n, dim=0)[i].contiguous()

    return take


def _transposed(t: Tensor) -> Tensor:
    return t.T.contiguous()


def weight_table(cfg: ModelConfig, hf_names: set[str]) -> dict[str, tuple[str, Transform]]:
    """clew parameter name -> (Hugging Face tensor name, transform), for the names present in a checkpoint."""
    table: dict[str, tuple[str, Transform]] = {}
    if cfg.family == "gpt2":
        pre = "transformer." if "transformer.wte.weight" in hf_names else ""
        table["embed.weight"] = (f"{pre}wte.weight", _same)
        table["pos_embed.weight"] = (f"{pre}wpe.weight", _same)
        for i in range(cfg.n_layers):
            h, b = f"{pre}h.{i}.", f"blocks.{i}."
            for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
                table[f"{b}{ours}.weight"] = (f"{h}{theirs}.weight", _same)
                table[f"{b}{ours}.bias"] = (f"{h}{theirs}.bias", _same)
            for j, name in enumerate("qkv"):
                table[f"{b}attn.{name}.weight"] = (f"{h}attn.c_attn.weight", _rows(j, 3, True))
                table[f"{b}attn.{name}.bias"] = (f"{h}attn.c_attn.bias", _rows(j, 3, False))
            for ours, theirs in (
                ("attn.o", "attn.c_proj"),
                ("mlp.up", "mlp.c_fc"),
                ("mlp.down", "mlp.c_proj"),
            ):
                table[f"{b}{ours}.weight"] = (f"{h}{theirs}.weight", _transposed)
                table[f"{b}{ours}.bias"] = (f"{h}{theirs}.bias", _same)
        table["ln_final.weight"] = (f"{pre}ln_f.weight", _same)
        table["ln_final.bias"] = (f"{pre}ln_f.bias", _same)
        return table

    embed = next(
        (n for n in sorted(hf_names) if n.endswith("embed_tokens.weight")), "model.embed_tokens.weight"
    )
    pre = embed[: -len("embed_tokens.weight")]
    gemma = cfg.post_mlp_norm
    table["embed.weight"] = (embed, _same)
    for i in range(cfg.n_layers):
        h, b = f"{pre}layers.{i}.", f"blocks.{i}."
        table[f"{b}ln1.weight"] = (f"{h}input_layernorm.weight", _same)
        if gemma:
            table[f"{b}attn_post.weight"] = (f"{h}post_attention_layernorm.weight", _same)
            table[f"{b}ln2.weight"] = (f"{h}pre_feedforward_layernorm.weight", _same)
            table[f"{b}mlp_post.weight"] = (f"{h}post_feedforward_layernorm.weight", _same)
        else:
            table[f"{b}ln2.weight"] = (f"{h}post_attention_layernorm.weight", _same)
        for name in "qkvo":
            table[f"{b}attn.{name}.weight"] = (f"{h}self_attn.{name}_proj.weight", _same)
            table[f"{b}attn.{name}.bias"] = (f"{h}self_attn.{name}_proj.bias", _same)
        for name in ("q_norm", "k_norm"):
            table[f"{b}attn.{name}.weight"] = (f"{h}self_attn.{name}.weight", _same)
        for name in ("gate", "up", "down"):
            table[f"{b}mlp.{name}.weight"] = (f"{h}mlp.{name}_proj.weight", _same)
            table[f"{b}mlp.{name}.bias"] = (f"{h}mlp.{name}_proj.bias", _same)
    table["ln_final.weight"] = (f"{pre}norm.weight", _same)
    lm_head = next((n for n in hf_names if n.endswith("lm_head.weight")), "lm_head.weight")
    table["unembed.weight"] = (lm_head, _same)
    return table


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ClewError(f"{index}: weight_map: expected a mapping of tensor names to file names")
        return {name: contained(folder, file, f"{index}: weight_map") for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ClewError(f"{folder}: no *.safetensors weight files")
    where: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                where.update(dict.fromkeys(f.keys(), file))
        except Exception as err:  # safetensors raises its own error types for damaged headers
            raise ClewError(f"{file}: not a readable safetensors file ({err})") from None
    return where


def _stored_numel(where: dict[str, Path]) -> int:
    """How many numbers the checkpoint's tensors hold, read from the files' headers."""
    from safetensors import safe_open

    total = 0
    for file in sorted(set(where.values())):
        try:
            with safe_open(file, framework="pt") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
        except FileNotFoundError:
            raise ClewError(f"{file}: no such file (named by the checkpoint)") from None
        except Exception as err:
            raise ClewError(f"{file}: not a readable safetensors file ({err})") from None
    return total


def check_sizes(model: Transformer, folder: Path) -> None:
    """Before anything is allocated: the sizes in ``config.json`` must fit the checkpoint's own tensors
    and this machine's memory (a damaged or hostile config must not ask for terabytes)."""
    where = _checkpoint_files(folder)
    table = weight_table(model.cfg, set(where))
    for name, _ in model.named_parameters(remove_duplicate=False):
        if not (model.cfg.tie_embeddings and name == "unembed.weight") and table[name][0] not in where:
            raise ClewError(
                f"{folder}: tensor {table[name][0]!r} (for {name}) is missing from the checkpoint"
            )
    tied = model.cfg.tie_embeddings
    wanted = sum(p.numel() for n, p in model.named_parameters() if not (tied and n == "unembed.weight"))
    stored = _stored_numel(where)
    if wanted > stored:
        raise ClewError(
            f"{folder / 'config.json'}: describes {wanted:,} parameters but the weight files hold only "
            f"{stored:,} numbers; the config does not match the weights"
        )
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if wanted * 4 > memory:
        raise ClewError(
            f"{folder}: the model needs {wanted * 4 / 2**30:.1f} GiB in float32, more than this machine's "
            f"{memory / 2**30:.1f} GiB of memory"
        )


def load_weights(model: Transformer, folder: Path) -> None:
    """Fill ``model``'s parameters from the safetensors checkpoint in ``folder``."""
    from safetensors import safe_open

    where = _checkpoint_files(folder)
    table = weight_table(model.cfg, set(where))
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = model.cfg.tie_embeddings
    handles: dict[Path, Any] = {}
    with torch.no_grad():
        for name, param in params.items():
            if tied and name == "unembed.weight":
                continue
            hf_name, transform = table[name]
            if hf_name not in where:
                raise ClewError(f"{folder}: tensor {hf_name!r} (for {name}) is missing from the checkpoint")
            file = where[hf_name]
            try:
                if file not in handles:
                    handles[file] = safe_open(file, framework="pt")
                tensor = handles[file].get_tensor(hf_name)
            except ClewError:
                raise
            except Exception as err:
                raise ClewError(f"{file}: cannot read tensor {hf_name!r} ({err})") from None
            tensor = transform(tensor)
            if tensor.shape != param.shape:
                raise ClewError(
                    f"{file}: tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(param.shape)} for {name}"
                )
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ClewError(f"{file}: tensor {hf_name!r} (for {name}) holds NaN or infinite values")
            param.copy_(tensor.to(param.dtype))


def load_tokenizer(folder: Path):  # -> transformers.PreTrainedTokenizerBase
    """The family's own tokenizer from the folder (its beginning-of-sequence convention included), or
    ``None`` with a one-line note when the folder has no tokenizer files (prompts are then token ids)."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        print(f"clew: note: {folder} has no tokenizer files; give prompts as token ids", file=sys.stderr)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ClewError(f"{folder}: cannot load the tokenizer ({type(err).__name__}: {err})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")
"""A folder with none of these has no tokenizer: every family then loads without one, alike."""


def pick_device(device: str | torch.device | None) -> torch.device:
    """CUDA when present and not overridden, CPU otherwise; an unknown or absent device is a one-line error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ClewError(f"--device {device!r}: not a device (cpu, cuda, cuda:1, mps)") from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            raise ClewError(f"--device {device}: this machine has no CUDA device; use --device cpu")
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise ClewError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    elif picked.type == "mps" and not torch.backends.mps.is_available():
        raise ClewError(f"--device {device}: MPS is not available here; use --device cpu")
    elif picked.type not in ("cpu", "cuda", "mps"):
        raise ClewError(f"--device {device!r}: clew runs on cpu, cuda or mps")
    return picked


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    tokenizer: bool = True,
) -> Transformer:
    """Load a model from a local folder, a ``.gguf`` file, a hub id or a built-in name.

    Returns a :class:`Transformer` in eval mode with ``model.tokenizer`` set (unless ``tokenizer=False``).
    """
    from clew.models.sources import resolve_model_source

    folder = resolve_model_source(str(name_or_path))
    model = load_folder(folder, dtype=dtype, device=device, tokenizer=tokenizer)
    model.name = str(name_or_path)
    return model


def load_folder(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    tokenizer: bool = True,
) -> Transformer:
    """Load a local Hugging Face folder (``config.json``, safetensors, tokenizer files)."""
    folder = Path(folder)
    cfg = ModelConfig.from_hf_file(folder / "config.json")
    with torch.device("meta"):
        model = Transformer(cfg)
    check_sizes(model, folder)
    model = model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.unembed.weight = model.embed.weight
    load_weights(model, folder)
    model = model.to(device=pick_device(device), dtype=dtype).eval()
    model.name = str(folder)
    if tokenizer:
        model.tokenizer = load_tokenizer(folder)
    return model

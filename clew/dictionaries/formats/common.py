"""What the layout readers share: hook-name translation, checked tensor reads, and assembly.

Each reader turns its files into one :class:`LayerParts` per layer (in clew's orientation:
``W_enc`` ``[F, d]``, decoders ``[F, d]`` or ``[F, n_dst, d]``, ``W_skip`` used as ``x @ W_skip.T``)
plus the facts it found (:class:`Facts`); :func:`assemble` checks that the layers agree and builds
the :class:`Transcoder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from clew.dictionaries.transcoder import LazyDecoder, Transcoder, TranscoderConfig
from clew.errors import ClewError

# TransformerLens hook names (circuit-tracer, SAELens) and Hugging Face module paths (Gemma Scope 2,
# sparsify), by the suffix after the layer number.
_READ_HOOKS = {
    "hook_resid_mid": "resid_mid",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
    "pre_feedforward_layernorm.output": "mlp_in",
    "mlp.input": "mlp_in",
}
_WRITE_HOOKS = {
    "hook_mlp_out": "resid_delta",
    "mlp.hook_out": "mlp_out",
    "post_feedforward_layernorm.output": "resid_delta",
    "mlp.output": "mlp_out",
}
WRITE_HOOK_NAMES = {"resid_delta": "hook_mlp_out", "mlp_out": "mlp.hook_out"}
READ_HOOK_NAMES = {"resid_mid": "hook_resid_mid", "mlp_in": "mlp.hook_in"}
_LAYER_PREFIX = re.compile(r"^(?:.*?\b(?:blocks|layers|h)\.(\d+)\.)?(.+)$")


def translate_hook(name: object, direction: str, where: str) -> tuple[str, int | None]:
    """clew's read or write point for a hook name, and the layer number in it (if any).

    ``direction`` is ``"read"`` or ``"write"``; ``where`` names file and field for the error message.
    """
    table = _READ_HOOKS if direction == "read" else _WRITE_HOOKS
    m = _LAYER_PREFIX.match(str(name))
    if m is None or not isinstance(name, str):
        raise ClewError(f"{where}: {direction} hook {name!r} is not a hook name")
    layer = int(m.group(1)) if m.group(1) is not None else None
    point = table.get(m.group(2))
    if point is None:
        known = ", ".join(sorted(table))
        raise ClewError(f"{where}: unknown {direction} hook {name!r} (known: {known})")
    return point, layer


def layer_from_name(path: Path | str) -> int | None:
    """The layer number in a file or folder name (``layer_12``, ``layers.12``, ``W_enc_12``...)."""
    found = re.findall(r"(?:layers?[._]|W_(?:enc|dec)_|blocks\.)(\d+)", str(path))
    return int(found[-1]) if found else None


def check_finite(t: Tensor, where: str, key: str) -> Tensor:
    """``t``, after checking it holds no NaN or infinity."""
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ClewError(f"{where}: {key} contains NaN or infinite values")
    return t


def expect_shape(t: Tensor, shape: tuple[int, ...], where: str, key: str) -> Tensor:
    if tuple(t.shape) != tuple(shape):
        raise ClewError(f"{where}: {key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


class SafetensorsFile:
    """Checked reads from one safetensors file: a missing key or a NaN is a one-line error."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ClewError(f"{path}: no such file")
        self.path = path
        try:
            with safe_open(str(path), framework="pt") as f:
                self.keys = set(f.keys())
        except Exception as err:  # safetensors raises its own error types
            raise ClewError(f"{path}: not a readable safetensors file ({err})") from None

    def has(self, key: str) -> bool:
        return key in self.keys

    def shape(self, key: str) -> tuple[int, ...]:
        self._need(key)
        with safe_open(str(self.path), framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def get(self, key: str) -> Tensor:
        self._need(key)
        with safe_open(str(self.path), framework="pt") as f:
            return check_finite(f.get_tensor(key), str(self.path), key)

    def maybe(self, key: str) -> Tensor | None:
        return self.get(key) if key in self.keys else None

    def lazy(self, key: str, dst_axis: list[int] | None = None) -> LazyDecoder:
        self._need(key)
        return LazyDecoder(self.path, key, dst_axis)

    def _need(self, key: str) -> None:
        if key not in self.keys:
            raise ClewError(f"{self.path}: missing tensor {key!r} (has: {', '.join(sorted(self.keys))})")


def load_npz(path: Path) -> dict[str, Tensor]:
    """All arrays of an ``.npz`` file as tensors, checked for NaNs."""
    if not path.is_file():
        raise ClewError(f"{path}: no such file")
    try:
        with np.load(path) as z:
            return {k: check_finite(torch.from_numpy(np.array(z[k])), str(path), k) for k in z.files}
    except (OSError, ValueError) as err:
        raise ClewError(f"{path}: not a readable .npz file ({err})") from None


@dataclass
class LayerParts:
    """One layer's weights in clew's orientation, and the file they came from."""

    where: str
    W_enc: Tensor  # [F, d]
    b_enc: Tensor  # [F]
    b_dec: Tensor  # [d], the bias at this layer as a destination
    W_dec: Tensor | LazyDecoder  # [F, d], or [F, len(dst_axis), d]
    dst_axis: list[int] | None = None  # destination layer of each slot of an in-memory 3-D W_dec
    threshold: Tensor | None = None  # [F] or a scalar
    W_skip: Tensor | None = None  # [d, d], used as x @ W_skip.T
    k: int | None = None  # TopK's k when stored with the weights


@dataclass
class Facts:
    """What a layout says about the whole dictionary (``None``: not stated, to be inferred)."""

    where: str
    kind: str | None = None
    activation: str | None = None
    k: int | None = None
    read: str | None = None
    write: str | None = None
    n_layers: int | None = None
    layers: list[int] | None = None
    model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def agree(self, name: str, value: Any, where: str) -> None:
        """Set fact ``name`` or check that ``value`` agrees with it."""
        if value is None:
            return
        old = getattr(self, name)
        if old is None:
            setattr(self, name, value)
        elif old != value:
            raise ClewError(f"{where}: {name} is {value!r} but other files say {old!r}")


HALF = (torch.float16, torch.bfloat16)


def stored_precision(weights: torch.Tensor, device: torch.device | str | None) -> torch.dtype:
    """The precision a dictionary is kept in when none is asked for: the stored one, except that 16-bit
    weights are upcast to float32 on a CPU, where 16-bit products are several times slower than
    float32 (``bench/bfloat16.py``); the price is twice the memory. On CUDA they stay as stored."""
    if not weights.is_floating_point():
        return torch.float32
    on_cpu = device is None or torch.device(device).type == "cpu"
    return torch.float32 if on_cpu and weights.dtype in HALF else weights.dtype


def assemble(
    facts: Facts,
    parts: dict[int, LayerParts],
    *,
    lazy: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Transcoder:
    """Check that the layers agree with each other and with ``facts``, and build the Transcoder."""
    if not parts:
        raise ClewError(f"{facts.where}: no transcoder layers found")
    layers = sorted(parts)
    first = parts[layers[0]]
    F, d = first.W_enc.shape
    for layer in layers:
        p = parts[layer]
        expect_shape(p.W_enc, (F, d), p.where, f"encoder of layer {layer}")
        expect_shape(p.b_enc, (F,), p.where, "b_enc")
        expect_shape(p.b_dec, (d,), p.where, "b_dec")
        facts.agree("k", p.k, p.where)
    kind = facts.kind or ("clt" if _decoder_ndim(first) == 3 else "plt")
    skips = {parts[layer].W_skip is not None for layer in layers}
    if len(skips) > 1:
        raise ClewError(f"{facts.where}: some layers have W_skip and others do not")
    has_threshold = all(parts[layer].threshold is not None for layer in layers)
    activation = facts.activation or ("jumprelu" if has_threshold else "relu")
    if activation == "jumprelu" and not has_threshold:
        missing = next(layer for layer in layers if parts[layer].threshold is None)
        raise ClewError(f"{parts[missing].where}: activation is jumprelu but there is no threshold")
    if activation in ("relu", "topk"):
        has_threshold = False
    n_layers = facts.n_layers or layers[-1] + 1
    cfg = make_config(
        facts.where,
        n_layers=n_layers,
        d_model=d,
        n_features=F,
        kind=kind,
        activation=activation,
        k=facts.k,
        read=facts.read or "mlp_in",
        write=facts.write or "mlp_out",
        skip=skips.pop(),
        layers=facts.layers if facts.layers is not None else layers,
        model_name=facts.model_name,
        extra=facts.extra,
    )
    assert cfg.layers is not None
    absent = [layer for layer in cfg.layers if layer not in parts]
    if absent:
        raise ClewError(f"{facts.where}: no files for layers {absent}")
    if dtype is None:
        dtype = stored_precision(first.W_enc, device)
    lazy_decoders = None
    if lazy and all(isinstance(parts[layer].W_dec, LazyDecoder) for layer in cfg.layers):
        lazy_decoders = {layer: parts[layer].W_dec for layer in cfg.layers}
    tc = Transcoder(
        cfg,
        threshold=has_threshold,
        lazy_decoders=lazy_decoders,  # type: ignore[arg-type]
        device=device,
        dtype=dtype,
        source=facts.where,
    )
    with torch.no_grad():
        for layer in cfg.layers:
            _fill(tc, layer, parts[layer])
    return tc


def _decoder_ndim(p: LayerParts) -> int:
    return len(p.W_dec.shape)


def _fill(tc: Transcoder, layer: int, p: LayerParts) -> None:
    i = tc.slot(layer)
    F, d = tc.cfg.n_features, tc.cfg.d_model
    tc.W_enc[i].copy_(p.W_enc)
    tc.b_enc[i].copy_(p.b_enc)
    tc.b_dec[i].copy_(p.b_dec)
    if tc.threshold is not None:
        assert p.threshold is not None
        if p.threshold.numel() not in (1, F):
            raise ClewError(f"{p.where}: threshold has shape {tuple(p.threshold.shape)}, expected ({F},)")
        tc.threshold[i].copy_(p.threshold.reshape(-1).expand(F))
    if tc.W_skip is not None:
        assert p.W_skip is not None
        tc.W_skip[i].copy_(expect_shape(p.W_skip, (d, d), p.where, "W_skip"))
    dsts = tc.dst_layers(layer)
    lazy_source = p.W_dec if isinstance(p.W_dec, LazyDecoder) else None
    if tc.cfg.kind == "clt" and lazy_source is not None and lazy_source.dst_axis is None:
        lazy_source.dst_axis = dsts  # a compact CLT decoder: slot j is the j-th layer written to
    axis = lazy_source.dst_axis if lazy_source is not None else p.dst_axis
    if tc.cfg.kind == "plt":
        want: tuple[int, ...] = (F, d)
    elif axis is not None:
        if not set(dsts) <= set(axis):
            raise ClewError(f"{p.where}: the decoder of layer {layer} does not cover layers {dsts}")
        want = (F, len(axis), d)
    else:
        want = (F, len(dsts), d)
    if tuple(p.W_dec.shape) != want:
        raise ClewError(
            f"{p.where}: decoder of layer {layer} has shape {tuple(p.W_dec.shape)}, expected {want}"
        )
    if tc.W_dec is None:
        return
    if lazy_source is not None:  # an eager transcoder from a lazily opened file
        if tc.cfg.kind == "plt":
            tc.W_dec[i].copy_(lazy_source.full(layer))
        else:
            for j, dst in enumerate(dsts):
                tc.W_dec[i][:, j].copy_(lazy_source.full(dst))
        return
    W = check_finite(p.W_dec, p.where, "W_dec")
    if tc.cfg.kind == "clt" and p.dst_axis is not None:
        W = W[:, [p.dst_axis.index(dst) for dst in dsts]]
    tc.W_dec[i].copy_(W)


def make_config(where: str, **fields: Any) -> TranscoderConfig:
    """A :class:`TranscoderConfig`, its problems reported against ``where``."""
    try:
        return TranscoderConfig(**fields)
    except ClewError as err:
        raise ClewError(f"{where}: {str(err).removeprefix('transcoder config: ')}") from None

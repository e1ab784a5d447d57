"""SAELens transcoders: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``cfg.json`` names the ``architecture`` (``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
``jumprelu_skip_transcoder``, or a plain ``standard`` / ``jumprelu`` / ``topk`` / ``batchtopk``),
``d_in``, ``d_sae``, optionally ``d_out``, and the TransformerLens hook names ``hook_name`` (read) and
``hook_name_out`` (write), at the top level or under ``metadata``. Weights: ``W_enc`` ``[d_in, F]``
(transposed relative to clew), ``W_dec`` ``[F, d_out]``, ``b_enc``, ``b_dec``, ``threshold`` for
JumpReLU, and ``W_skip`` ``[d_out, d_in]`` used as ``x @ W_skip.T``.

A dictionary without ``hook_name_out`` is a sparse autoencoder, not a transcoder, and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clew.dictionaries.activations import canonical_activation
from clew.dictionaries.formats.common import (
    Facts,
    LayerParts,
    SafetensorsFile,
    expect_shape,
    translate_hook,
)
from clew.errors import ClewError
from clew.files import load_json


def is_layer(path: Path) -> bool:
    return path.is_dir() and (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()


def find_layers(root: Path) -> list[Path]:
    return sorted(
        p.parent for p in root.rglob("sae_weights.safetensors") if (p.parent / "cfg.json").is_file()
    )


def _field(cfg: dict[str, Any], name: str) -> Any:
    meta = cfg.get("metadata")
    if isinstance(meta, dict) and meta.get(name) is not None:
        return meta[name]
    return cfg.get(name)


def _architecture(arch: str, where: str) -> tuple[str, bool]:
    """The activation and whether there is a skip path, from an SAELens architecture name."""
    name = arch.lower()
    skip = "skip" in name
    base = name.replace("skip_transcoder", "").replace("transcoder", "").strip("_")
    return canonical_activation(base or "relu", where), skip


def read_layer(folder: Path, root: Path) -> tuple[int, LayerParts, Facts]:
    cfg_path = folder / "cfg.json"
    where = str(cfg_path)
    cfg = load_json(cfg_path)
    activation, skip = _architecture(str(cfg.get("architecture", "standard")), f"{where}: architecture")
    hook_in, hook_out = _field(cfg, "hook_name"), _field(cfg, "hook_name_out")
    if hook_in is None:
        raise ClewError(f"{where}: missing field 'hook_name'")
    if hook_out is None:
        raise ClewError(f"{where}: no hook_name_out: this is a sparse autoencoder, not a transcoder")
    read, layer = translate_hook(hook_in, "read", f"{where}: hook_name")
    write, layer_out = translate_hook(hook_out, "write", f"{where}: hook_name_out")
    if layer is None:
        raise ClewError(f"{where}: hook_name {hook_in!r} names no layer (blocks.<n>....)")
    if layer_out is not None and layer_out != layer:
        raise ClewError(f"{where}: hook_name_out is at layer {layer_out} but hook_name at layer {layer}")
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none"):
        raise ClewError(f"{where}: normalize_activations {norm!r} is not supported (only 'none')")

    f = SafetensorsFile(folder / "sae_weights.safetensors")
    W_enc = f.get("W_enc")
    if W_enc.ndim != 2:
        raise ClewError(f"{f.path}: W_enc has shape {tuple(W_enc.shape)}, expected (d_in, d_sae)")
    d_in, d_sae = W_enc.shape
    for name, value in (("d_in", d_in), ("d_sae", d_sae)):
        if cfg.get(name) is not None and cfg[name] != value:
            raise ClewError(f"{where}: {name} is {cfg[name]} but W_enc has shape {tuple(W_enc.shape)}")
    if cfg.get("d_out") is not None and cfg["d_out"] != d_in:
        raise ClewError(f"{where}: d_out {cfg['d_out']} differs from d_in {d_in}; clew needs both = d_model")
    threshold = f.maybe("threshold")
    if threshold is None and f.has("log_threshold"):
        threshold = torch.exp(f.get("log_threshold"))
    W_skip = f.maybe("W_skip")
    if skip and W_skip is None:
        raise ClewError(f"{f.path}: architecture {cfg.get('architecture')!r} needs W_skip")
    if W_skip is not None:
        expect_shape(W_skip, (d_in, d_in), str(f.path), "W_skip")
    parts = LayerParts(
        where=str(f.path),
        W_enc=W_enc.T,  # stored [d_in, F]
        b_enc=f.get("b_enc"),
        b_dec=f.get("b_dec"),
        W_dec=f.lazy("W_dec"),
        threshold=threshold,
        W_skip=W_skip,
    )
    k = cfg.get("k")
    facts = Facts(
        where=where,
        kind="plt",
        activation=activation,
        k=int(k) if k is not None else None,
        read=read,
        write=write,
        model_name=_field(cfg, "model_name"),
    )
    return layer, parts, facts

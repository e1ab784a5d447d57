"""Gemma Scope 1 and Gemma Scope 2 transcoders (Google DeepMind's releases).

Gemma Scope 1: one ``params.npz`` per layer (``layer_{i}/width_.../average_l0_.../params.npz``) with
``W_enc`` ``[d, F]`` (transposed relative to clew), ``W_dec`` ``[F, d]``, ``b_enc``, ``b_dec`` and the
JumpReLU ``threshold``. They read the normalised MLP input and write after the post-MLP norm.

Gemma Scope 2: per layer a folder with ``config.json`` (``hf_hook_point_in``, ``hf_hook_point_out``,
``model_name``...) and ``params.safetensors`` holding ``w_enc`` ``[d, F]``, ``w_dec`` ``[F, d]``,
``b_enc``, ``b_dec``, ``threshold`` and, for affine transcoders, ``affine_skip_connection``
``[d, d]`` used as ``x @ A`` (clew's ``W_skip`` is its transpose). A cross-layer transcoder has one
safetensors file per layer whose ``w_dec`` is ``[F, n_layers, d]``, slot ``j`` writing to layer ``j``
(slots below the source layer are unused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clew.dictionaries.formats.common import (
    Facts,
    LayerParts,
    SafetensorsFile,
    layer_from_name,
    load_npz,
    translate_hook,
)
from clew.errors import ClewError
from clew.files import load_json

GS1_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def read_gs1_file(path: Path) -> tuple[LayerParts, Facts]:
    """One Gemma Scope 1 ``params.npz``."""
    where = str(path)
    z = load_npz(path)
    for key in GS1_KEYS:
        if key not in z:
            raise ClewError(f"{where}: missing array {key!r} (has: {', '.join(sorted(z))})")
    if z["W_enc"].ndim != 2:
        raise ClewError(f"{where}: W_enc has shape {tuple(z['W_enc'].shape)}, expected (d_model, d_sae)")
    parts = LayerParts(
        where=where,
        W_enc=z["W_enc"].T,  # stored [d, F]
        b_enc=z["b_enc"],
        b_dec=z["b_dec"],
        W_dec=z["W_dec"],
        threshold=z["threshold"],
    )
    return parts, Facts(where=where, kind="plt", activation="jumprelu", read="mlp_in", write="resid_delta")


def is_gs1(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".npz") or (path.is_dir() and (path / "params.npz").is_file())


def find_gs1(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npz"))


def read_gs1(path: Path, root: Path) -> tuple[int, LayerParts, Facts]:
    """A Gemma Scope 1 layer: the layer number comes from the path (``layer_{i}`` folder)."""
    file = path / "params.npz" if path.is_dir() else path
    layer = layer_from_name(_relative(file, root))
    if layer is None:
        layer = layer_from_name(file.resolve())
    if layer is None:
        raise ClewError(f"{file}: cannot tell the layer; Gemma Scope keeps it in a folder named layer_<n>")
    parts, facts = read_gs1_file(file)
    return layer, parts, facts


def read_gs2_file(path: Path, config: dict[str, Any] | None) -> tuple[LayerParts, Facts]:
    """One Gemma Scope 2 safetensors file, with the ``config.json`` beside it when there is one."""
    where = str(path)
    f = SafetensorsFile(path)
    shape = f.shape("w_enc")
    if len(shape) != 2:
        raise ClewError(f"{where}: w_enc has shape {shape}, expected (d_in, d_sae)")
    dec_shape = f.shape("w_dec")
    if len(dec_shape) == 3:  # cross-layer: [F, n_layers, d], slot j = layer j
        W_dec = f.lazy("w_dec", dst_axis=list(range(dec_shape[1])))
        kind = "clt"
    else:
        W_dec = f.lazy("w_dec")
        kind = "plt"
    skip = f.maybe("affine_skip_connection")
    parts = LayerParts(
        where=where,
        W_enc=f.get("w_enc").T,  # stored [d, F]
        b_enc=f.get("b_enc"),
        b_dec=f.get("b_dec"),
        W_dec=W_dec,
        threshold=f.get("threshold"),
        W_skip=None if skip is None else skip.T,  # stored for x @ A; clew uses x @ W_skip.T
    )
    facts = Facts(where=where, kind=kind, activation="jumprelu", read="mlp_in", write="resid_delta")
    if kind == "clt":
        facts.n_layers = dec_shape[1]
    if config is not None:
        cwhere = str(path.parent / "config.json")
        for field, direction in (("hf_hook_point_in", "read"), ("hf_hook_point_out", "write")):
            if config.get(field) is not None:
                point, _ = translate_hook(config[field], direction, f"{cwhere}: {field}")
                setattr(facts, direction, point)
        facts.model_name = config.get("model_name")
        facts.extra = {k: config[k] for k in ("l0", "width") if k in config}
    return parts, facts


def _config_beside(file: Path) -> dict[str, Any] | None:
    path = file.parent / "config.json"
    return load_json(path) if path.is_file() else None


def is_gs2(path: Path) -> bool:
    if path.is_dir():
        return (path / "params.safetensors").is_file() and (path / "config.json").is_file()
    return path.suffix == ".safetensors" and SafetensorsFile(path).has("w_enc")


def find_gs2(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.safetensors") if SafetensorsFile(p).has("w_enc"))


def read_gs2(path: Path, root: Path) -> tuple[int, LayerParts, Facts]:
    """A Gemma Scope 2 layer: the layer comes from the file name, its folder's name, or config.json."""
    file = path / "params.safetensors" if path.is_dir() else path
    config = _config_beside(file)
    layer = layer_from_name(file.stem) if file.stem != "params" else None
    if layer is None:
        layer = layer_from_name(file.parent.name)
    if layer is None and config is not None and config.get("hf_hook_point_in") is not None:
        _, layer = translate_hook(config["hf_hook_point_in"], "read", f"{file.parent / 'config.json'}")
    if layer is None:
        raise ClewError(f"{file}: cannot tell the layer (no layer_<n> in its name, no hf_hook_point_in)")
    parts, facts = read_gs2_file(file, config)
    return layer, parts, facts


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name

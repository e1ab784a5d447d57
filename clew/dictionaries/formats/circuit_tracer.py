"""circuit-tracer's layouts, read and written; clew's own layout is this one plus a ``clew:`` block.

Per-layer (``model_kind: transcoder_set``): ``config.yaml`` + ``layer_{i}.safetensors`` holding
``W_enc`` ``[F, d]``, ``W_dec`` ``[F, d]``, ``b_enc`` ``[F]``, ``b_dec`` ``[d]``, optionally
``activation_function.threshold`` ``[F]`` and ``W_skip`` ``[d, d]`` (used as ``x @ W_skip.T``). The
config may instead list the files under ``transcoders`` (layer ``i`` = the ``i``-th entry, as
circuit-tracer reads it); entries may be Gemma Scope ``.npz`` or ``hf://`` files.

Cross-layer (``model_kind: cross_layer_transcoder``): ``W_enc_{i}.safetensors`` holding ``W_enc_{i}``
``[F, d]``, ``b_enc_{i}``, ``b_dec_{i}``, optionally ``threshold_{i}``, and ``W_dec_{i}.safetensors``
holding ``W_dec_{i}`` ``[F, n_layers - i, d]``. clew adds ``W_skip_{i}`` to the encoder file for skip
CLTs (circuit-tracer stores none and ignores it).

The ``clew:`` block in ``config.yaml`` records what the other fields cannot: the exact activation,
``k``, the layers, ``n_layers``, the read and write points, ``model_name`` and ``extra``. Other tools
ignore it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from clew.dictionaries.activations import canonical_activation
from clew.dictionaries.formats import gemma_scope
from clew.dictionaries.formats.common import (
    READ_HOOK_NAMES,
    WRITE_HOOK_NAMES,
    Facts,
    LayerParts,
    SafetensorsFile,
    assemble,
    layer_from_name,
    translate_hook,
)
from clew.dictionaries.transcoder import Transcoder
from clew.errors import ClewError
from clew.files import contained, load_yaml

MODEL_KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
CLEW_FORMAT_VERSION = 1


def read(
    folder: Path,
    *,
    lazy: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    resolve: Callable[[str], Path],
) -> Transcoder:
    """Read a circuit-tracer folder (``config.yaml`` and its weight files); ``resolve`` fetches ``hf://`` entries."""
    config_path = folder / "config.yaml"
    where = str(config_path)
    config = load_yaml(config_path)
    _check_types(config, _CONFIG_TYPES, where)
    if isinstance(config.get("clew"), dict):
        _check_types(config["clew"], _CLEW_TYPES, f"{where}: clew")
    facts = Facts(where=where)
    model_kind = config.get("model_kind")
    if model_kind not in MODEL_KINDS:
        raise ClewError(f"{where}: model_kind {model_kind!r} is not one of {', '.join(MODEL_KINDS)}")
    facts.kind = MODEL_KINDS[model_kind]
    for field, direction in (("feature_input_hook", "read"), ("feature_output_hook", "write")):
        if field not in config:
            raise ClewError(f"{where}: missing field {field!r}")
        point, _ = translate_hook(config[field], direction, f"{where}: {field}")
        setattr(facts, direction, point)
    facts.model_name = config.get("model_name")
    if config.get("activation") is not None:
        facts.activation = canonical_activation(config["activation"], f"{where}: activation")
    facts.k = _count(config["k"], f"{where}: k") if config.get("k") is not None else None
    _apply_clew_block(facts, config.get("clew"), where)

    if "transcoders" in config:
        parts = _listed_layers(config["transcoders"], folder, facts, resolve)
    elif facts.kind == "plt":
        parts = _plt_layers(folder, facts)
    else:
        parts = _clt_layers(folder, facts)
    return assemble(facts, parts, lazy=lazy, device=device, dtype=dtype)


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model_kind": (str,),
    "feature_input_hook": (str,),
    "feature_output_hook": (str,),
    "activation": (str,),
    "k": (int,),
    "model_name": (str,),
    "clew": (dict,),
    "transcoders": (list,),
}
_CLEW_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "read": (str,),
    "write": (str,),
    "activation": (str,),
    "k": (int,),
    "n_layers": (int,),
    "model_name": (str,),
    "layers": (list,),
    "extra": (dict,),
}


def _check_types(config: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
    """Each known field, when set, of its type (a mapping where a name belongs is a one-line error)."""
    for name, kinds in types.items():
        value = config.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            names = " or ".join(k.__name__ for k in kinds)
            raise ClewError(f"{where}: {name}: expected {names}, got {type(value).__name__} {value!r:.60}")


def _apply_clew_block(facts: Facts, block: Any, where: str) -> None:
    """Take clew's own facts; the read and write points must agree with the hook names."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise ClewError(f"{where}: clew: expected a mapping of fields")
    at = f"{where}: clew"
    if block.get("kind") is not None and block["kind"] != facts.kind:
        raise ClewError(f"{at}.kind is {block['kind']!r} but model_kind says {facts.kind!r}")
    for name in ("read", "write"):
        facts.agree(name, block.get(name), f"{at}.{name} (against the hook name)")
    if block.get("activation") is not None:
        facts.activation = canonical_activation(block["activation"], f"{at}.activation")
    for name in ("k", "n_layers"):
        if block.get(name) is not None:
            setattr(facts, name, _count(block[name], f"{at}.{name}"))
    if block.get("model_name") is not None:
        facts.model_name = str(block["model_name"])
    if block.get("layers") is not None:
        layers = block["layers"]
        if not isinstance(layers, list) or not all(type(x) is int and x >= 0 for x in layers):
            raise ClewError(f"{at}.layers: expected a list of layer numbers, got {layers!r}")
        facts.layers = sorted(layers)
    extra = block.get("extra") or {}
    if not isinstance(extra, dict):
        raise ClewError(f"{at}.extra: expected a mapping")
    facts.extra = dict(extra)


def _count(value: Any, where: str) -> int:
    """A positive whole number from a config field (a string or a fraction there is a one-line error)."""
    if type(value) is not int or value < 1:
        raise ClewError(f"{where}: expected a positive whole number, got {value!r}")
    return value


def read_layer_file(path: Path) -> tuple[LayerParts, Facts | None]:
    """One layer's weights from a file of any per-layer layout that a ``transcoders`` list may name."""
    if path.suffix == ".npz":
        return gemma_scope.read_gs1_file(path)
    f = SafetensorsFile(path)
    if f.has("w_enc"):
        return gemma_scope.read_gs2_file(path, config=None)
    return read_plt_file(f), None


def read_plt_file(f: SafetensorsFile) -> LayerParts:
    """A circuit-tracer ``layer_{i}.safetensors``."""
    where = str(f.path)
    W_enc = f.get("W_enc")
    if W_enc.ndim != 2:
        raise ClewError(f"{where}: W_enc has shape {tuple(W_enc.shape)}, expected (d_transcoder, d_model)")
    k = int(f.get("k").item()) if f.has("k") else None
    return LayerParts(
        where=where,
        W_enc=W_enc,
        b_enc=f.get("b_enc"),
        b_dec=f.get("b_dec"),
        W_dec=f.lazy("W_dec"),
        threshold=f.maybe("activation_function.threshold"),
        W_skip=f.maybe("W_skip"),
        k=k,
    )


def _listed_layers(
    entries: Any, folder: Path, facts: Facts, resolve: Callable[[str], Path]
) -> dict[int, LayerParts]:
    where = f"{facts.where}: transcoders"
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ClewError(f"{where}: expected a list of file names")
    layers = facts.layers if facts.layers is not None else list(range(len(entries)))
    if len(layers) != len(entries):
        raise ClewError(f"{where}: {len(entries)} files for {len(layers)} layers in clew.layers")
    parts = {}
    for layer, entry in zip(layers, entries):
        path = resolve(entry) if entry.startswith("hf://") else contained(folder, entry, where)
        parts[layer], layer_facts = read_layer_file(path)
        if layer_facts is not None:  # Gemma Scope files state their own points: they must agree
            for name in ("read", "write", "activation"):
                facts.agree(name, getattr(layer_facts, name), str(path))
    return parts


def _plt_layers(folder: Path, facts: Facts) -> dict[int, LayerParts]:
    found = {}
    for path in folder.glob("layer_*.safetensors"):
        layer = layer_from_name(path.name)
        if layer is not None:
            found[layer] = path
    if not found and facts.layers is None:
        raise ClewError(f"{folder}: config.yaml has no transcoders list and there are no layer_*.safetensors")
    wanted = facts.layers if facts.layers is not None else list(range(max(found) + 1))
    parts = {}
    for layer in wanted:
        if layer not in found:
            raise ClewError(f"{folder / f'layer_{layer}.safetensors'}: missing layer file")
        parts[layer] = read_plt_file(SafetensorsFile(found[layer]))
    return parts


def _clt_layers(folder: Path, facts: Facts) -> dict[int, LayerParts]:
    n_files = len(list(folder.glob("W_enc_*.safetensors")))
    if facts.layers is not None:
        wanted = facts.layers
    else:
        wanted = list(range(facts.n_layers or n_files))
    if not wanted:
        raise ClewError(f"{folder}: no W_enc_*.safetensors files for a cross-layer transcoder")
    parts = {}
    for i in wanted:
        enc = _layer_file(folder / f"W_enc_{i}.safetensors")
        dec = _layer_file(folder / f"W_dec_{i}.safetensors")
        parts[i] = LayerParts(
            where=str(enc.path),
            W_enc=enc.get(f"W_enc_{i}"),
            b_enc=enc.get(f"b_enc_{i}"),
            b_dec=enc.get(f"b_dec_{i}"),
            W_dec=dec.lazy(f"W_dec_{i}"),
            threshold=enc.maybe(f"threshold_{i}"),
            W_skip=enc.maybe(f"W_skip_{i}"),
        )
    return parts


def _layer_file(path: Path) -> SafetensorsFile:
    if not path.is_file():
        raise ClewError(f"{path}: missing layer file")
    return SafetensorsFile(path)


# ----- writing -----------------------------------------------------------------------------------


def write(tc: Transcoder, folder: Path) -> None:
    """Write ``tc`` in circuit-tracer's layout (per-layer or cross-layer by its kind) with a ``clew:`` block."""
    c = tc.cfg
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "model_kind": "transcoder_set" if c.kind == "plt" else "cross_layer_transcoder",
        "feature_input_hook": READ_HOOK_NAMES[c.read],
        "feature_output_hook": WRITE_HOOK_NAMES[c.write],
    }
    if c.model_name:
        config["model_name"] = c.model_name
    # circuit-tracer's own reading of `activation`: "topk" needs k, "relu" is ReLU, anything else
    # takes a JumpReLU from the stored thresholds. A BatchTopK dictionary is written as what it is at
    # inference; the clew block keeps its real name.
    thresholded = tc.threshold is not None
    config["activation"] = "jumprelu" if thresholded else ("relu" if c.activation == "relu" else "topk")
    if config["activation"] == "topk":
        config["k"] = c.k
    block = {"format_version": CLEW_FORMAT_VERSION, **c.to_dict()}
    block["skip_convention"] = "x @ W_skip.T"
    config["clew"] = block
    try:
        text = yaml.safe_dump(config, sort_keys=False)
    except yaml.YAMLError as err:
        raise ClewError(f"{folder / 'config.yaml'}: clew.extra cannot be written as YAML ({err})") from None
    # whole or nothing: every file is written into a fresh folder inside ``folder`` first, then renamed
    # into place (config.yaml last), so a failure half-way leaves the old dictionary as it was
    stage = Path(tempfile.mkdtemp(prefix=".clew-write.", dir=folder))
    try:
        names = []
        with torch.no_grad():
            for layer in tc.layers:
                if c.kind == "plt":
                    names.append(f"layer_{layer}.safetensors")
                    save_file(_plt_tensors(tc, layer), str(stage / names[-1]))
                else:
                    enc, dec = _clt_tensors(tc, layer)
                    names += [f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"]
                    save_file(enc, str(stage / names[-2]))
                    save_file(dec, str(stage / names[-1]))
        (stage / "config.yaml").write_text(text)
        stale = [
            p
            for pattern in ("layer_*.safetensors", "W_enc_*.safetensors", "W_dec_*.safetensors")
            for p in folder.glob(pattern)
            if p.name not in names
        ]
        for name in names:
            os.replace(stage / name, folder / name)
        os.replace(stage / "config.yaml", folder / "config.yaml")
        for p in stale:  # an older dictionary's layers that this one does not have
            p.unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _plt_tensors(tc: Transcoder, layer: int) -> dict[str, torch.Tensor]:
    i = tc.slot(layer)
    out = {
        "W_enc": _cpu(tc.W_enc[i]),
        "W_dec": _cpu(tc.decoder_weights(layer, layer)),
        "b_enc": _cpu(tc.b_enc[i]),
        "b_dec": _cpu(tc.b_dec[i]),
    }
    if tc.threshold is not None:
        out["activation_function.threshold"] = _cpu(tc.threshold[i])
    if tc.W_skip is not None:
        out["W_skip"] = _cpu(tc.W_skip[i])
    return out


def _clt_tensors(tc: Transcoder, layer: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    i = tc.slot(layer)
    enc = {
        f"W_enc_{layer}": _cpu(tc.W_enc[i]),
        f"b_enc_{layer}": _cpu(tc.b_enc[i]),
        f"b_dec_{layer}": _cpu(tc.b_dec[i]),
    }
    if tc.threshold is not None:
        enc[f"threshold_{layer}"] = _cpu(tc.threshold[i])
    if tc.W_skip is not None:
        enc[f"W_skip_{layer}"] = _cpu(tc.W_skip[i])
    blocks = [tc.decoder_weights(layer, dst) for dst in tc.dst_layers(layer)]  # each [F, d]
    dec = {f"W_dec_{layer}": _cpu(torch.stack(blocks, dim=1))}  # [F, n_dst, d]
    return enc, dec

"""EleutherAI sparsify transcoders: a folder per hook point with ``cfg.json`` and ``sae.safetensors``.

The folder is named after the hooked module (``layers.{i}.mlp``, or ``h.{i}.mlp`` for GPT-2): a
transcoder reads that module's input (the normalised MLP input) and writes its output (before any
post-MLP norm). ``sae.safetensors`` holds ``encoder.weight`` ``[F, d]``, ``encoder.bias`` ``[F]``,
``W_dec`` ``[F, d]``, ``b_dec`` ``[d]`` and, with ``skip_connection``, ``W_skip`` ``[d, d]`` used as
``x @ W_skip.T``. The activation is TopK on ``relu(pre)`` with ``k`` from ``cfg.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

from clew.dictionaries.activations import canonical_activation
from clew.dictionaries.formats.common import Facts, LayerParts, SafetensorsFile
from clew.errors import ClewError
from clew.files import load_json

_HOOKPOINT = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)\.mlp$")
_UNSUPPORTED = ("embed_skip", "gram_lookup")


def is_layer(path: Path) -> bool:
    return path.is_dir() and (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file()


def find_layers(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("sae.safetensors") if (p.parent / "cfg.json").is_file())


def read_layer(folder: Path, root: Path) -> tuple[int, LayerParts, Facts]:
    cfg_path = folder / "cfg.json"
    where = str(cfg_path)
    cfg = load_json(cfg_path)
    m = _HOOKPOINT.match(folder.name)
    if m is None:
        raise ClewError(
            f"{folder}: unknown hook point {folder.name!r} (a sparsify transcoder's folder is named "
            "layers.<n>.mlp or h.<n>.mlp)"
        )
    layer = int(m.group(1))
    if not cfg.get("transcode", False):
        raise ClewError(f"{where}: transcode is false: this is a sparse autoencoder, not a transcoder")
    for name in _UNSUPPORTED:
        if cfg.get(name):
            raise ClewError(f"{where}: {name} is set; clew does not support it")
    activation = canonical_activation(cfg.get("activation", "topk"), f"{where}: activation")
    f = SafetensorsFile(folder / "sae.safetensors")
    W_enc = f.get("encoder.weight")
    if W_enc.ndim != 2:
        raise ClewError(
            f"{f.path}: encoder.weight has shape {tuple(W_enc.shape)}, expected (n_latents, d_in)"
        )
    n_latents, d_in = W_enc.shape
    if cfg.get("d_in") is not None and cfg["d_in"] != d_in:
        raise ClewError(f"{where}: d_in is {cfg['d_in']} but encoder.weight is {d_in} wide")
    if cfg.get("num_latents") and cfg["num_latents"] != n_latents:
        raise ClewError(
            f"{where}: num_latents is {cfg['num_latents']} but encoder.weight has {n_latents} rows"
        )
    if cfg.get("skip_connection") and not f.has("W_skip"):
        raise ClewError(f"{f.path}: skip_connection is set in cfg.json but there is no W_skip")
    parts = LayerParts(
        where=str(f.path),
        W_enc=W_enc,
        b_enc=f.get("encoder.bias"),
        b_dec=f.get("b_dec"),
        W_dec=f.lazy("W_dec"),
        W_skip=f.maybe("W_skip"),
    )
    facts = Facts(
        where=where,
        kind="plt",
        activation=activation,
        k=cfg.get("k"),
        read="mlp_in",
        write="mlp_out",
        extra={"sparsify": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}},
    )
    return layer, parts, facts

"""Reading every known dictionary layout, and writing circuit-tracer's (clew's own).

:func:`load_transcoder` detects the layout of a file or folder:

- ``config.yaml`` (circuit-tracer, per-layer or cross-layer; also clew's own);
- ``params.npz`` files under ``layer_{i}`` folders (Gemma Scope 1);
- ``params.safetensors`` + ``config.json`` folders, or per-layer CLT files with ``w_enc`` (Gemma Scope 2);
- ``cfg.json`` + ``sae.safetensors`` folders named after the hook point (sparsify);
- ``cfg.json`` + ``sae_weights.safetensors`` folders (SAELens).

A folder holding several per-layer dictionaries of one layout is read as one transcoder set.
``hf://owner/repo[/path][@revision]`` is fetched through ``huggingface_hub`` first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clew.dictionaries.formats import circuit_tracer, gemma_scope, saelens, sparsify
from clew.dictionaries.formats.common import Facts, LayerParts, assemble
from clew.dictionaries.transcoder import Transcoder
from clew.errors import ClewError

LayerReader = Callable[[Path, Path], tuple[int, LayerParts, Facts]]


class _PerLayer:
    """A layout with one dictionary per layer: how to recognise one, find many, and read one."""

    def __init__(
        self,
        name: str,
        is_layer: Callable[[Path], bool],
        find: Callable[[Path], list[Path]],
        read: LayerReader,
    ):
        self.name, self.is_layer, self.find, self.read = name, is_layer, find, read


PER_LAYER = (
    _PerLayer("gemma-scope-1", gemma_scope.is_gs1, gemma_scope.find_gs1, gemma_scope.read_gs1),
    _PerLayer("gemma-scope-2", gemma_scope.is_gs2, gemma_scope.find_gs2, gemma_scope.read_gs2),
    _PerLayer("sparsify", sparsify.is_layer, sparsify.find_layers, sparsify.read_layer),
    _PerLayer("saelens", saelens.is_layer, saelens.find_layers, saelens.read_layer),
)
LAYOUTS = ("circuit-tracer",) + tuple(p.name for p in PER_LAYER)


def load_transcoder(
    path: str | Path,
    *,
    lazy: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transcoder:
    """Load a dictionary of any known layout.

    ``lazy``: keep the decoders on disk and read the rows asked for (safetensors files only; ``.npz``
    decoders are always read in full). ``dtype``: ``None`` keeps the stored precision, except that
    16-bit weights are upcast to float32 on a CPU (:func:`~clew.dictionaries.formats.common.stored_precision`).
    """
    root = resolve(path)
    if not root.exists():
        raise ClewError(f"{root}: no such file or folder")
    layout, found = detect(root)
    if layout == "circuit-tracer":
        folder = root.parent if root.is_file() else root
        return circuit_tracer.read(folder, lazy=lazy, device=device, dtype=dtype, resolve=resolve)
    reader = next(p for p in PER_LAYER if p.name == layout)
    return _read_set(reader, root, found, lazy=lazy, device=device, dtype=dtype)


def save_transcoder(tc: Transcoder, path: str | Path) -> None:
    """Write ``tc`` in circuit-tracer's layout (per-layer or cross-layer by kind), with clew's facts
    in the ``clew:`` block of ``config.yaml``."""
    circuit_tracer.write(tc, Path(path))


def detect(path: Path) -> tuple[str, list[Path]]:
    """The layout of ``path`` and, for per-layer layouts, the per-layer files or folders found."""
    if path.is_file() and path.name == "config.yaml" or path.is_dir() and (path / "config.yaml").is_file():
        return "circuit-tracer", [path]
    for layout in PER_LAYER:
        if layout.is_layer(path):
            return layout.name, [path]
    if path.is_dir():
        for layout in PER_LAYER:
            found = layout.find(path)
            if found:
                return layout.name, found
    raise ClewError(f"{path}: no dictionary of a known layout here (known: {', '.join(LAYOUTS)})")


def _read_set(
    layout: _PerLayer,
    root: Path,
    found: list[Path],
    *,
    lazy: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Transcoder:
    facts = Facts(where=str(root))
    parts: dict[int, LayerParts] = {}
    extras: dict[int, dict[str, Any]] = {}
    for path in found:
        layer, layer_parts, layer_facts = layout.read(path, root)
        if layer in parts:
            raise ClewError(
                f"{path}: a second dictionary for layer {layer} (the first is {parts[layer].where}); "
                "point at one of them"
            )
        parts[layer] = layer_parts
        for name in ("kind", "activation", "k", "read", "write", "n_layers", "model_name"):
            facts.agree(name, getattr(layer_facts, name), layer_facts.where)
        extras[layer] = layer_facts.extra
    distinct = {repr(sorted(e.items())) for e in extras.values()}
    facts.extra = next(iter(extras.values())) if len(distinct) == 1 else {"per_layer": extras}
    facts.extra = {**facts.extra, "source_layout": layout.name}
    return assemble(facts, parts, lazy=lazy, device=device, dtype=dtype)


def resolve(path: str | Path) -> Path:
    """A local path for ``path``, downloading ``hf://owner/repo[/sub/path][@revision]`` first
    (``?revision=`` is accepted too)."""
    text = str(path)
    if not text.startswith("hf://"):
        return Path(text).expanduser()
    rest, _, query = text[len("hf://") :].partition("?")  # circuit-tracer writes ?revision=...
    rest, _, revision = rest.partition("@")
    if query.startswith("revision="):
        revision = query[len("revision=") :]
    pieces = rest.strip("/").split("/")
    if len(pieces) < 2 or not all(pieces[:2]):
        raise ClewError(f"{text}: expected hf://owner/repo[/path][@revision]")
    repo_id, sub = "/".join(pieces[:2]), "/".join(pieces[2:])
    patterns = [sub, f"{sub}/*", f"{sub}/**"] if sub else None
    import huggingface_hub

    try:
        local = huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=revision or None, allow_patterns=patterns
        )
    except Exception as err:  # network, authentication, missing repository: all one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClewError(f"{text}: download failed ({first})") from None
    return Path(local) / sub if sub else Path(local)


__all__ = ["LAYOUTS", "detect", "load_transcoder", "resolve", "save_transcoder"]

"""Built-in assets: model folders shipped inside the package, resolved by name.

This package is data, not code: a leaf that imports nothing but :mod:`clew.errors`. The model layer
resolves a built-in name here (``load_model("organism")``), the command line finds a built-in
model's own dictionaries here, and the builders that make an asset (``clew organism build --ship``)
write into its folder. Nothing here knows how an asset was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clew.errors import ClewError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuiltIn:
    """A model shipped inside the package, with the dictionaries trained for it."""

    name: str
    """The name a user types (``--model organism``)."""
    folder: Path
    """The Hugging Face folder (``config.json``, weights, tokenizer) inside the package."""
    dictionaries: tuple[str, ...]
    """Subfolders of ``folder`` holding dictionaries in circuit-tracer's layout; the first is the default."""
    build_command: str
    """The command that (re)writes ``folder``, named in the error when it is missing."""

    def model_path(self) -> Path:
        """The model's folder, or a one-line error when this installation lacks it."""
        if not (self.folder / "config.json").is_file():
            raise ClewError(
                f"{self.folder}: the {self.name} is not built in this installation (build it with `{self.build_command}`)"
            )
        return self.folder

    def dictionary_path(self, kind: str | None = None) -> Path:
        """The folder of dictionary ``kind`` (default: the first of :attr:`dictionaries`)."""
        kind = kind or self.dictionaries[0]
        if kind not in self.dictionaries:
            raise ClewError(f"{self.name} dictionary {kind!r}: choose one of {', '.join(self.dictionaries)}")
        path = self.model_path() / kind
        if not (path / "config.yaml").is_file():
            raise ClewError(f"{path}: the {self.name} was built without its {kind} dictionary")
        return path


ORGANISM = BuiltIn(
    name="organism",
    folder=HERE / "organism",
    dictionaries=("clt", "plt"),
    build_command="clew organism build --ship",
)
"""clew's own small language model, with a cross-layer (``clt``) and a per-layer (``plt``) transcoder."""

BUILT_INS: dict[str, BuiltIn] = {ORGANISM.name: ORGANISM}


def built_in(name: str) -> BuiltIn | None:
    """The built-in asset called ``name`` (case-insensitive), or None."""
    return BUILT_INS.get(name.lower())


def build_info(folder: str | Path | None = None) -> dict[str, Any]:
    """``organism.json`` of a built organism folder (the shipped one by default): seed, training, scores."""
    path = Path(folder) if folder is not None else ORGANISM.model_path()
    try:
        return json.loads((path / "organism.json").read_text())
    except FileNotFoundError:
        raise ClewError(f"{path}: no organism.json (not an organism folder)") from None


__all__ = ["BUILT_INS", "ORGANISM", "BuiltIn", "build_info", "built_in"]

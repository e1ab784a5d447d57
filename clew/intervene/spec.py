"""What an intervention changes, and the one way to write it down.

Nodes are written the way graphs name them (``Graph.describe``):

- a feature: ``L1/F12@6`` (layer 1, feature 12, position 6); ``L1/F12@6+`` is position 6 and every
  later one, generated tokens included; ``L1/F12@6,8`` is positions 6 and 8;
- an error node: ``error L1@6``; a token's embedding: ``token@6`` (any text between ``token`` and ``@``
  is ignored, so ``token ' Dallas'@6`` as a graph prints it works too).

An :class:`Edit` sets, scales or zeroes such a node's activation (an error node's vector and an
embedding are scaled as a whole: their "activation" is 1). A :class:`Steer` adds a vector to the
residual stream entering a layer (``L3@6:vector.npy``; layer ``n_layers`` is the final residual).
Positions may be negative (from the end of the prompt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from clew.errors import ClewError

OPS = ("set", "scale", "zero")


@dataclass(frozen=True)
class Node:
    """A node of a prompt's local replacement model, by what it is rather than by number."""

    kind: str
    """``feature``, ``error`` or ``embedding``."""
    layer: int
    """The feature's or error's layer (-1 for an embedding)."""
    positions: tuple[int, ...]
    """Where (may be negative: from the end)."""
    feature: int = -1
    """The feature's index in its layer's dictionary."""
    onward: bool = False
    """Also every position after the last one given, generated tokens included."""

    def label(self) -> str:
        where = ",".join(str(p) for p in self.positions) + ("+" if self.onward else "")
        if self.kind == "feature":
            return f"L{self.layer}/F{self.feature}@{where}"
        if self.kind == "error":
            return f"error L{self.layer}@{where}"
        return f"token@{where}"

    def at(self, n_pos: int) -> list[int]:
        """The positions meant in a sequence of ``n_pos`` tokens."""
        out = []
        for p in self.positions:
            q = p + n_pos if p < 0 else p
            if not 0 <= q < n_pos:
                raise ClewError(f"{self.label()}: position {p} is outside the {n_pos} tokens")
            out.append(q)
        if self.onward:
            out += range(max(out) + 1, n_pos)
        return sorted(set(out))


@dataclass(frozen=True)
class Edit:
    """A change to one node's activation: ``set`` to ``value``, ``scale`` by ``value``, or ``zero``."""

    node: Node
    op: str = "zero"
    value: float = 0.0

    def apply(self, clean: Tensor) -> Tensor:
        """The new activation(s) from the clean one(s)."""
        if self.op == "set":
            return torch.full_like(clean, self.value)
        if self.op == "scale":
            return clean * self.value
        return torch.zeros_like(clean)


@dataclass(frozen=True)
class Steer:
    """A vector added to the residual stream entering ``layer`` (``n_layers``: the final residual)."""

    layer: int
    positions: tuple[int, ...]
    vector: Tensor
    """(D,)"""
    onward: bool = False

    def at(self, n_pos: int) -> list[int]:
        return Node("embedding", -1, self.positions, onward=self.onward).at(n_pos)


@dataclass
class Interventions:
    """Everything one run changes."""

    edits: list[Edit] = field(default_factory=list)
    steers: list[Steer] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.edits or self.steers)

    def describe(self) -> str:
        parts = [
            f"{e.node.label()}={'0' if e.op == 'zero' else ('x' if e.op == 'scale' else '') + f'{e.value:g}'}"
            for e in self.edits
        ]
        parts += [
            f"steer L{s.layer}@{','.join(map(str, s.positions))}{'+' if s.onward else ''}"
            for s in self.steers
        ]
        return ", ".join(parts) or "nothing"


# --- the one syntax ------------------------------------------------------------------------------------

_POSITIONS = r"(-?\d+(?:,-?\d+)*)(\+?)"
_FEATURE = re.compile(rf"L(\d+)/F(\d+)@{_POSITIONS}")
_ERROR = re.compile(rf"error L(\d+)@{_POSITIONS}")
_EMBEDDING = re.compile(rf"token(?:\s.*)?@{_POSITIONS}", re.S)


def parse_node(text: str) -> Node:
    """``L1/F12@6``, ``L1/F12@6+``, ``L1/F12@6,8``, ``error L1@6``, ``token@6`` -> a :class:`Node`."""
    t = text.strip()
    if m := _FEATURE.fullmatch(t):
        return Node("feature", int(m[1]), _positions(m[3]), int(m[2]), m[4] == "+")
    if m := _ERROR.fullmatch(t):
        return Node("error", int(m[1]), _positions(m[2]), onward=m[3] == "+")
    if m := _EMBEDDING.fullmatch(t):
        return Node("embedding", -1, _positions(m[1]), onward=m[2] == "+")
    raise ClewError(
        f"cannot read node {text!r}: write a feature as L1/F12@6 (L1/F12@6+ for position 6 and after), "
        "an error node as 'error L1@6', an embedding as token@6"
    )


def _positions(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(","))


def parse_edit(text: str, op: str) -> Edit:
    """``--zero L1/F12@6``, ``--set L1/F12@6=3.5``, ``--scale L1/F12@6=0.5``."""
    if op not in OPS:
        raise ClewError(f"unknown operation {op!r}: one of {', '.join(OPS)}")
    if op == "zero":
        return Edit(parse_node(text), "zero")
    node, sep, value = text.rpartition("=")
    if not sep:
        raise ClewError(f"--{op} {text!r}: write NODE=VALUE, e.g. L1/F12@6=2.5")
    try:
        number = float(value)
    except ValueError:
        raise ClewError(f"--{op} {text!r}: {value!r} is not a number") from None
    return Edit(parse_node(node), op, number)


def parse_steer(text: str, d_model: int, scale: float = 1.0) -> Steer:
    """``L3@6:FILE`` (``L3@6+:FILE`` for position 6 and after): add the vector in FILE (``.npy``,
    ``.safetensors`` holding one tensor, or whitespace-separated numbers) times ``scale``."""
    m = re.fullmatch(rf"L(\d+)@{_POSITIONS}:(.+)", text.strip(), re.S)
    if m is None:
        raise ClewError(f"cannot read --steer {text!r}: write LAYER@POSITION:FILE, e.g. L3@6:vector.npy")
    vector = load_vector(Path(m[4]), d_model)
    return Steer(int(m[1]), _positions(m[2]), vector * scale, m[3] == "+")


def load_vector(path: Path, d_model: int) -> Tensor:
    """A (d_model,) vector from ``.npy`` (no pickles), ``.safetensors`` (one tensor) or a text file."""
    if not path.is_file():
        raise ClewError(f"{path}: no such vector file")
    try:
        if path.suffix == ".npy":
            import numpy as np

            vector = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise ClewError(f"{path}: holds {len(tensors)} tensors; a steering vector file holds one")
            vector = next(iter(tensors.values())).float()
        else:
            vector = torch.tensor([float(x) for x in path.read_text(encoding="utf-8").split()])
    except ClewError:
        raise
    except Exception as err:  # unreadable numbers, a pickled .npy, a damaged file
        raise ClewError(f"{path}: not a vector file ({type(err).__name__}: {err})") from None
    vector = vector.flatten()
    if len(vector) != d_model:
        raise ClewError(
            f"{path}: the vector has {len(vector)} numbers; the model's residual stream has {d_model}"
        )
    return vector

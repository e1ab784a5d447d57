"""``clew train``: train a transcoder; every option is a field of :class:`clew.training.TrainConfig`.

The options, their types, defaults and help are generated from the dataclass and its field docstrings.
Several processes: ``torchrun --nproc_per_node N -m clew.cli train ...``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from clew.models.points import READ_POINTS, WRITE_POINTS
from clew.training.config import ACTIVATIONS, TRAIN_KINDS, TrainConfig, field_docs

CHOICES: dict[str, tuple[str, ...]] = {
    "kind": TRAIN_KINDS,
    "activation": ACTIVATIONS,
    "read": tuple(READ_POINTS),
    "write": tuple(WRITE_POINTS),
}


def layer_list(text: str) -> list[int]:
    """``"3"``, ``"0,2,5"`` or ``"0-11"`` (inclusive) -> layer numbers."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a layer number, list (0,2,5) or range (0-11)"
        ) from None
    return out


def add_config_options(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One ``--field-name`` option per dataclass field, typed from its annotation, helped by its docstring."""
    docs = field_docs(cls)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" ", "")
        help_text = docs.get(f.name, "").replace("``", "").replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            if f.default is not None and kind != "bool":
                kw["help"] = f"{help_text} (default: {f.default})"
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list[int]"):
            kw["type"], kw["nargs"], kw["metavar"] = layer_list, "+", "LAYERS"
        else:
            base = kind.split("|")[0]
            kw["type"] = {"int": int, "float": float, "str": str}[base]
            kw["metavar"] = f.name.upper()
            if f.name in CHOICES:
                kw["choices"], kw["metavar"] = CHOICES[f.name], "{" + ",".join(CHOICES[f.name]) + "}"
        parser.add_argument(flag, **kw)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a per-layer, skip or cross-layer transcoder",
        description="Train a transcoder on a model's MLPs and save it in circuit-tracer's layout, then print "
        "its evaluation (L0, FVU, dead features, CE-loss score). Under torchrun, every process trains on its "
        "own data shards.",
    )
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.training import train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if values["layers"] is not None:
        values["layers"] = sorted({layer for group in values["layers"] for layer in group})
    cfg = TrainConfig(**values)
    from pathlib import Path

    from clew.files import check_out_dir

    check_out_dir(Path(cfg.out), "--out")
    result = train(cfg)
    if result.metrics is not None:
        print(result.metrics.table())
    from clew.training import dist

    if dist.rank() == 0:
        print(f"saved the transcoder to {cfg.out}", file=sys.stderr)
    return 0

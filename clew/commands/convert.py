"""``clew convert SRC DST``: rewrite a dictionary of any readable layout in circuit-tracer's layout."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clew.errors import ClewError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="rewrite a transcoder in circuit-tracer's layout",
        description="Read a transcoder in any known layout (circuit-tracer, Gemma Scope 1 and 2, sparsify, "
        "SAELens; a local path or hf://owner/repo/path) and write it in circuit-tracer's layout, with clew's "
        "read/write points, activation and metadata in config.yaml.",
    )
    p.add_argument(
        "src", metavar="SRC", help="the dictionary to read: a file, a folder or hf://owner/repo/path"
    )
    p.add_argument("dst", metavar="DST", help="the folder to write")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="store the weights in this precision")
    p.add_argument("--model-name", help="record the id of the model the dictionary is for")
    p.add_argument("--overwrite", action="store_true", help="replace a dictionary already in DST")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.dictionaries import load_transcoder, save_transcoder

    dst = Path(args.dst)
    if (dst / "config.yaml").exists() and not args.overwrite:
        raise ClewError(f"{dst}: already holds a dictionary (config.yaml); pass --overwrite to replace it")
    src = Path(args.src)
    if not str(args.src).startswith("hf://") and src.exists() and src.resolve() == dst.resolve():
        raise ClewError(f"{dst}: the destination is the source; write somewhere else")
    tc = load_transcoder(args.src, lazy=True, dtype=_DTYPES.get(args.dtype) if args.dtype else None)
    if args.model_name:
        tc.cfg.model_name = args.model_name
    save_transcoder(tc, dst)
    c = tc.cfg
    print(
        f"wrote {c.kind.upper()} ({len(tc.layers)} layers x {c.n_features} features, {c.activation}, "
        f"{c.read} -> {c.write}) to {dst}"
    )
    return 0

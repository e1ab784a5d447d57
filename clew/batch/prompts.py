"""The prompts of a batch: a text file (one prompt a line) or JSON Lines (one object a line).

A JSONL object has ``prompt`` (required), and optionally ``id``, ``targets`` (a token or a list of
tokens to explain), ``contrast`` (two tokens: explain the logit difference) and any other fields
(``template``, ``answer``, ``state`` ...), which are kept in the store's index for grouping. A line
that cannot be read is reported with its line number and skipped; the rest are traced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clew.errors import ClewError

RESERVED = ("id", "prompt", "targets", "contrast")


@dataclass(frozen=True)
class PromptSpec:
    """One prompt to trace and what to explain in it."""

    id: str
    """Unique within a store: given in the JSONL, else a hash of the prompt and its targets."""
    prompt: str
    """The text to trace."""
    targets: tuple[str, ...] = ()
    """Tokens to explain; empty: the model's top tokens."""
    contrast: tuple[str, str] | None = None
    """Explain the logit difference of these two tokens instead."""
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Every other field of the JSONL object (for grouping in ``clew aggregate``)."""


def spec_id(prompt: str, targets: tuple[str, ...], contrast: tuple[str, str] | None) -> str:
    """A stable id from what is traced: the same prompt and targets give the same id in every run."""
    key = json.dumps([prompt, list(targets), list(contrast) if contrast else None])
    return "h" + hashlib.sha256(key.encode()).hexdigest()[:15]


@dataclass
class PromptFile:
    """The prompts read from a file, and the lines that could not be read."""

    specs: list[PromptSpec]
    """Every readable prompt, in file order, without duplicates of an id."""
    problems: list[str]
    """``"line N: why"`` for every line skipped."""


def read_prompts(path: str | Path) -> PromptFile:
    """Read ``path``: JSON Lines when it ends in ``.jsonl`` (or its first non-blank line starts with
    ``{``), else one prompt a line. Blank lines are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClewError(f"{path}: no such prompts file") from None
    except UnicodeDecodeError as err:
        raise ClewError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    jsonl = path.suffix == ".jsonl" or first.startswith("{")
    specs: list[PromptSpec] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spec = _from_json(line) if jsonl else _from_text(line)
        except ValueError as err:
            problems.append(f"line {number}: {err}")
            continue
        if spec.id in seen:
            problems.append(f"line {number}: id {spec.id!r} is also on line {seen[spec.id]}")
            continue
        seen[spec.id] = number
        specs.append(spec)
    if not specs:
        raise ClewError(f"{path}: no prompt could be read" + (f" ({problems[0]})" if problems else ""))
    return PromptFile(specs, problems)


def _from_text(line: str) -> PromptSpec:
    prompt = line.rstrip("\r\n")
    return PromptSpec(spec_id(prompt, (), None), prompt)


def _from_json(line: str) -> PromptSpec:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("field 'prompt' must be a non-empty string")
    targets = obj.get("targets", ())
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise ValueError("field 'targets' must be a string or a list of strings")
    contrast = obj.get("contrast")
    if contrast is not None:
        if not (
            isinstance(contrast, list) and len(contrast) == 2 and all(isinstance(t, str) for t in contrast)
        ):
            raise ValueError("field 'contrast' must be a list of two strings")
        if targets:
            raise ValueError("give 'targets' or 'contrast', not both")
        contrast = (contrast[0], contrast[1])
    given = obj.get("id")
    if given is not None and not isinstance(given, (str, int)):
        raise ValueError("field 'id' must be a string or an integer")
    targets = tuple(targets)
    ident = str(given) if given is not None else spec_id(prompt, targets, contrast)
    fields = {k: v for k, v in obj.items() if k not in RESERVED}
    return PromptSpec(ident, prompt, targets, contrast, fields)

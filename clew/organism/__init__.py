"""The organism: clew's own small language model, trained by clew, whose behaviours were planted.

Because its corpus was written by :mod:`clew.organism.corpus`, what it knows is known: US cities and
their states, capitals, countries' languages, athletes' sports, two-hop questions ("the capital of the
state containing Dallas"), induction over invented names, two-digit addition and antonyms in English
and French, each with a held-out set. It is the demo model and a test bed with ground truth.

- :func:`model_path` / :func:`dictionary_path`: the shipped folders (``clew.models.load_model("organism")``
  loads the model; its dictionaries are the default of ``clew trace --model organism``).
- :func:`probes`, :func:`evaluate`, :func:`greedy_judge`: the exam and its grading.
- :func:`build`: the whole pipeline (``clew organism build``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clew.errors import ClewError
from clew.organism.corpus import TASKS, Probe, documents, probes
from clew.organism.evaluation import FLOORS, Scores, evaluate, greedy_judge
from clew.organism.pipeline import BuildResult, build

NAME = "organism"
WEIGHTS = Path(__file__).resolve().parent / "weights"
DICTIONARY_KINDS = ("clt", "plt")


def model_path() -> Path:
    """The shipped organism's Hugging Face folder (inside the package)."""
    if not (WEIGHTS / "config.json").is_file():
        raise ClewError(
            f"{WEIGHTS}: the organism is not built in this installation (build it with `clew organism build --ship`)"
        )
    return WEIGHTS


def dictionary_path(kind: str = "clt") -> Path:
    """The shipped organism's ``"clt"`` (cross-layer) or ``"plt"`` (per-layer) transcoders."""
    if kind not in DICTIONARY_KINDS:
        raise ClewError(f"organism dictionary {kind!r}: choose one of {', '.join(DICTIONARY_KINDS)}")
    path = model_path() / kind
    if not (path / "config.yaml").is_file():
        raise ClewError(f"{path}: the organism was built without its {kind} dictionary")
    return path


def build_info(folder: str | Path | None = None) -> dict[str, Any]:
    """``organism.json`` of a built organism (the shipped one by default): seed, training, scores."""
    path = Path(folder) if folder is not None else model_path()
    try:
        return json.loads((path / "organism.json").read_text())
    except FileNotFoundError:
        raise ClewError(f"{path}: no organism.json (not an organism folder)") from None


__all__ = [
    "FLOORS",
    "BuildResult",
    "NAME",
    "TASKS",
    "Probe",
    "Scores",
    "build",
    "build_info",
    "dictionary_path",
    "documents",
    "evaluate",
    "greedy_judge",
    "model_path",
    "probes",
]

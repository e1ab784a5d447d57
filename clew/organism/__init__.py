"""The organism: clew's own small language model, trained by clew, whose behaviours were planted.

Because its corpus was written by :mod:`clew.organism.corpus`, what it knows is known: US cities and
their states, capitals, countries' languages, athletes' sports, two-hop questions ("the capital of the
state containing Dallas"), induction over invented names, two-digit addition and antonyms in English
and French, each with a held-out set. It is the demo model and a test bed with ground truth.

The shipped organism is an asset, :data:`clew.assets.ORGANISM` (``clew.models.load_model("organism")``
loads it; its dictionaries are the default of ``clew trace --model organism``): this package only
builds it, and ``clew organism build --ship`` writes there.

- :func:`probes`, :func:`examine`, :func:`greedy_judge`: the exam and its grading.
- :func:`build`: the whole pipeline (``clew organism build``).
"""

from __future__ import annotations

from clew.organism.corpus import TASKS, Probe, documents, probes
from clew.organism.evaluation import FLOORS, ExamScores, examine, greedy_judge
from clew.organism.pipeline import BuildResult, build

__all__ = [
    "FLOORS",
    "BuildResult",
    "TASKS",
    "Probe",
    "ExamScores",
    "build",
    "documents",
    "examine",
    "greedy_judge",
    "probes",
]

"""The organism's feature stores: what each feature of its dictionaries means, collected from its own
corpus and shipped beside each dictionary (``clt/features.sqlite``), so that ``clew demo`` labels its
graphs at once.

:func:`build_stores` is called by the organism's builder after the dictionaries are trained, and by
``clew organism features`` for the organism already shipped (no retraining).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from clew.organism.corpus import documents

STORE_NAME = "features.sqlite"
"""The store's file name inside each dictionary folder."""
SHIPPED_DOCS = 15_000
"""Documents of the organism's corpus a shipped store is collected from: about 0.9 M tokens (an eighth
of the model's training corpus, in the corpus's own order), a few minutes on two cores."""
AFTER = 8
"""Tokens kept after each example's peak (the store's default is 3): the corpus names a city's state a
few tokens after it ("Tucson is a city in Arizona"), and the supernodes' names read the state from
there (:mod:`clew.circuits.names`)."""


class OrganismCorpus:
    """The organism's training corpus (its document generator), readable from any document number."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.name = f"organism corpus (seed {seed})"

    def documents(self, start: int) -> Iterator[str]:
        return itertools.islice(documents(self.seed, 10**12), start, None)


def build_stores(
    folder: str | Path,
    kinds: tuple[str, ...] = ("clt", "plt"),
    *,
    seed: int = 0,
    max_docs: int = SHIPPED_DOCS,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Collect ``folder/<kind>/features.sqlite`` for each dictionary of a built organism folder that has
    one; returns the stores written. A killed build resumes where it stopped."""
    from clew.dictionaries import load_transcoder
    from clew.features import CollectConfig, collect
    from clew.models.loading import load_folder

    folder = Path(folder)
    model = load_folder(folder, device=device)
    written = []
    for kind in kinds:
        path = folder / kind
        if not (path / "config.yaml").is_file():
            continue
        tc = load_transcoder(path, device=model.embed.weight.device)
        cfg = CollectConfig(
            max_docs=max_docs, seed=seed, after=AFTER, device=device, threads=threads, progress=progress
        )
        result = collect(
            model,
            tc,
            OrganismCorpus(seed),
            path / STORE_NAME,
            cfg,
            model_name="organism",
            dictionary_name=kind,
        )
        written.append(result.path)
    return written

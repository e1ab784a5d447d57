"""Induction heads across training: head scores and in-context learning at each checkpoint.

The claim (Olsson et al., 2022) is that induction heads form abruptly, in a phase change, and that
in-context learning improves at the same moment. :func:`score_checkpoints` measures both on a series
of saved models (``clew organism build --checkpoint-every N`` writes them): at each checkpoint, every
head's induction and previous-token scores on windows of a text (as ``clew heads --text`` scores them),
the mean next-token loss, and the **in-context-learning score**: over the text's documents (separated
by blank lines; each read alone, after the family's BOS), the mean loss on each document's last
``LATE`` tokens minus the mean loss on its tokens at positions ``EARLY``. A model that uses its
context predicts a story's late tokens (the names it has seen, the phrasing it has read) better than
its early ones: the score is negative, and the more so the more it learns in context.
:func:`phase_figure` draws both against the training step.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clew.errors import ClewError
from clew.heads.motifs import pattern_scores, text_sequences
from clew.models.transformer import Transformer
from clew.render import Axes, Canvas

EARLY = (5, 25)
"""Positions of a document (after any BOS) whose loss is the early loss: [5, 25)."""
LATE = 20
"""The document's last this many tokens give the late loss (documents of at least 3 x LATE tokens)."""


@dataclass
class CheckpointScores:
    step: int
    loss: float
    """Mean next-token loss over the windows."""
    icl: float
    """Late loss minus early loss (negative: the model learns in context)."""
    induction: list[list[float]]
    """(L, H) induction scores."""
    previous_token: list[list[float]]
    """(L, H) previous-token scores."""

    def top(self, name: str) -> tuple[int, int, float]:
        """The highest-scoring head for ``name`` (``induction`` or ``previous_token``): (layer, head, score)."""
        table = torch.tensor(getattr(self, name))
        i = int(table.argmax())
        return i // table.shape[1], i % table.shape[1], float(table.flatten()[i])

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_folders(root: str | Path) -> list[tuple[int, Path]]:
    """The ``step-NNNNN`` model folders under ``root`` (or ``root/checkpoints``), by step."""
    root = Path(root)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    found = sorted(
        (int(m[1]), p)
        for p in root.glob("step-*")
        if (m := re.fullmatch(r"step-(\d+)", p.name)) and p.is_dir()
    )
    if not found:
        raise ClewError(
            f"{root}: no checkpoint folders (step-NNNNN/); build with `clew organism build --checkpoint-every N`"
        )
    return found


@torch.no_grad()
def context_losses(model: Transformer, text: str) -> tuple[float, float]:
    """(mean next-token loss, late minus early loss) over the documents of ``text`` (module docstring)."""
    from clew.heads.motifs import bos_token

    tok = model.tokenizer
    if tok is None:
        raise ClewError("measuring in-context learning needs the model's tokenizer, and this model has none")
    bos = bos_token(model)
    device = model.embed.weight.device
    early, late, every = [], [], []
    for doc in (d.strip() for d in text.split("\n\n")):
        ids = list(tok(doc, add_special_tokens=False, verbose=False)["input_ids"])[: model.cfg.n_ctx - 1]
        if len(ids) < 3 * LATE:
            continue
        tokens = torch.tensor(([bos] if bos is not None else []) + ids, device=device)
        logits = model(tokens[None])[0, :-1].float()
        loss = F.cross_entropy(logits, tokens[1:], reduction="none").cpu()  # entry i predicts token i + 1
        offset = 1 if bos is not None else 0
        per_pos = loss[offset - 1 :] if offset else torch.cat([torch.full((1,), float("nan")), loss])
        early.append(per_pos[EARLY[0] : EARLY[1]].mean())  # per_pos[j]: the loss of document token j
        late.append(per_pos[-LATE:].mean())
        every.append(per_pos[1:].mean() if not offset else per_pos.mean())
    if not early:
        raise ClewError(
            f"the text has no document of at least {3 * LATE} tokens (documents are separated by blank lines)"
        )
    return float(torch.stack(every).mean()), float(torch.stack(late).mean() - torch.stack(early).mean())


def score_checkpoints(
    root: str | Path, text: str, n_seqs: int = 8, length: int | None = None, progress: bool = True
) -> list[CheckpointScores]:
    """Head scores and in-context learning at every checkpoint under ``root`` (see the module docstring)."""
    from tqdm.auto import tqdm

    from clew.models.loading import load_folder

    out = []
    for step, folder in tqdm(checkpoint_folders(root), desc="checkpoints", disable=not progress):
        model = load_folder(folder)
        seqs = text_sequences(model, text, n_seqs, length)
        scores = pattern_scores(model, seqs)
        loss, icl = context_losses(model, text)
        out.append(
            CheckpointScores(step, loss, icl, scores["induction"].tolist(), scores["previous_token"].tolist())
        )
    return out


def phase_figure(rows: list[CheckpointScores], path: str | Path, title: str = "") -> Path:
    """One figure, two panels against the training step: the top induction and previous-token head
    scores (and the final top induction head's score throughout), and the in-context-learning score."""
    steps = [r.step for r in rows]
    final_layer, final_head, _ = rows[-1].top("induction")
    c = Canvas(900, 620, title=title or "induction heads across training")
    c.text(450, 24, title or "induction heads across training", 14, weight="bold")
    x_range = (min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    top = Axes(c, (80, 60, 560, 220), x_range, (0.0, 1.0))
    top.frame("training step", "head score", "attention scores of the top heads")
    series = [
        ("top induction score", "#d7301f", [r.top("induction")[2] for r in rows]),
        (
            f"induction score of L{final_layer}.H{final_head}",
            "#fc8d59",
            [r.induction[final_layer][final_head] for r in rows],
        ),
        ("top previous-token score", "#2b83ba", [r.top("previous_token")[2] for r in rows]),
    ]
    for i, (name, colour, values) in enumerate(series):
        top.c.polyline([(top.px(s), top.py(v)) for s, v in zip(steps, values)], colour, 2.0)
        c.line(650, 80 + 18 * i, 668, 80 + 18 * i, colour, 2.0)
        c.text(672, 84 + 18 * i, name, 10, anchor="start")
    icl = [r.icl for r in rows]
    lo, hi = min(icl + [0.0]), max(icl + [0.0])
    pad = 0.05 * (hi - lo or 1.0)
    bottom = Axes(c, (80, 360, 560, 200), x_range, (lo - pad, hi + pad))
    bottom.frame("training step", "late - early loss (nats)", "in-context learning (lower: more)")
    c.line(bottom.px(x_range[0]), bottom.py(0.0), bottom.px(x_range[1]), bottom.py(0.0), "#999", dash="3,3")
    c.polyline([(bottom.px(s), bottom.py(v)) for s, v in zip(steps, icl)], "#1a9641", 2.0)
    for s, v in zip(steps, icl):
        c.circle(bottom.px(s), bottom.py(v), 2.5, "#1a9641", title=f"step {s}: {v:+.3f}")
    return c.save(path)


def jumps(rows: list[CheckpointScores]) -> dict[str, int]:
    """The step at which each quantity changes most between consecutive checkpoints."""

    def largest(values: list[float]) -> int:
        deltas = [abs(b - a) for a, b in zip(values, values[1:])]
        return rows[1 + max(range(len(deltas)), key=deltas.__getitem__)].step if deltas else rows[0].step

    return {
        "induction": largest([r.top("induction")[2] for r in rows]),
        "previous_token": largest([r.top("previous_token")[2] for r in rows]),
        "icl": largest([r.icl for r in rows]),
    }

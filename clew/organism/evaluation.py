"""Grading the organism: run the probes of :mod:`clew.organism.corpus` through a model.

A *judge* maps probes to right/wrong. :func:`greedy_judge` makes one from any causal language model
(a callable from token ids ``(B, P)`` to logits ``(B, P, V)``, or a ``transformers`` model) and its
tokenizer: a probe is right when greedy decoding after the prompt produces exactly the answer's tokens,
checked in one teacher-forced pass (every answer token is the argmax given the ones before it).
:func:`examine` turns the verdicts into accuracies per task, group and split, which
:data:`FLOORS` grades.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from clew.organism.corpus import SPLITS, TASKS, Probe

Judge = Callable[[Sequence[Probe]], Sequence[bool]]

FLOORS: dict[tuple[str, str], float] = {
    ("facts", "train"): 0.98,
    ("induction", "train"): 0.98,
    ("induction", "heldout"): 0.98,
    ("addition", "train"): 0.98,
    ("addition", "heldout"): 0.98,
    ("two_hop", "heldout"): 0.90,
}
"""The accuracies the shipped organism must reach: (task, split) -> minimum."""


def greedy_judge(model, tokenizer, *, batch_size: int = 64) -> Judge:
    """A judge that runs ``model`` on each probe's prompt and answer, batched by length."""

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        out = model(tokens)
        return out if isinstance(out, torch.Tensor) else out.logits

    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def judge(probes: Sequence[Probe]) -> list[bool]:
        encoded = [_encode(tokenizer, p) for p in probes]
        order = sorted(range(len(probes)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        verdicts = [False] * len(probes)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in chunk]
            tokens = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
            for row, seq in enumerate(seqs):
                tokens[row, : len(seq)] = torch.tensor(seq)
            with torch.no_grad():
                predicted = forward(tokens.to(device)).argmax(-1).cpu()
            for row, i in enumerate(chunk):
                prompt, answer = encoded[i]
                guess = predicted[row, len(prompt) - 1 : len(prompt) - 1 + len(answer)].tolist()
                verdicts[i] = guess == answer
        return verdicts

    return judge


def _encode(tokenizer, probe: Probe) -> tuple[list[int], list[int]]:
    """The prompt's ids (with the BOS token) and the answer's, as the text would be tokenised whole;
    the answer alone when the whole does not begin with the prompt's tokens."""
    prompt = list(tokenizer(probe.prompt)["input_ids"])
    whole = list(tokenizer(probe.prompt + probe.answer)["input_ids"])
    if whole[: len(prompt)] == prompt and len(whole) > len(prompt):
        return prompt, whole[len(prompt) :]
    return prompt, list(tokenizer(probe.answer, add_special_tokens=False)["input_ids"])


@dataclass
class ExamScores:
    """Right answers and totals per (task, group, split)."""

    counts: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    wrong: list[Probe] = field(default_factory=list)

    def add(self, probe: Probe, right: bool) -> None:
        tally = self.counts.setdefault((probe.task, probe.group, probe.split), [0, 0])
        tally[0] += int(right)
        tally[1] += 1
        if not right:
            self.wrong.append(probe)

    def accuracy(self, task: str, split: str, group: str | None = None) -> float | None:
        """The share right, over the groups of ``task`` (or one group); ``None`` when nothing was asked."""
        right = total = 0
        for (t, g, s), (r, n) in self.counts.items():
            if t == task and s == split and (group is None or g == group):
                right, total = right + r, total + n
        return right / total if total else None

    def groups(self, task: str) -> list[str]:
        return sorted({g for t, g, _ in self.counts if t == task})

    def below_floors(self, floors: dict[tuple[str, str], float] = FLOORS) -> list[str]:
        """One line per floor not reached (a floor with nothing measured counts as not reached)."""
        out = []
        for (task, split), floor in floors.items():
            acc = self.accuracy(task, split)
            if acc is None or acc < floor:
                shown = "not measured" if acc is None else f"{acc:.1%}"
                out.append(f"{task} ({split}): {shown} < {floor:.0%}")
        return out

    def summary(self) -> dict[str, dict[str, float | None]]:
        """``{task: {split: accuracy}}``."""
        return {task: {split: self.accuracy(task, split) for split in SPLITS} for task in TASKS}

    def markdown(self) -> str:
        """A table of accuracies: each task, then its groups, train and held-out."""

        def cell(acc: float | None, task: str, split: str, top: bool) -> str:
            if acc is None:
                return "–"
            floor = FLOORS.get((task, split)) if top else None
            mark = "" if floor is None else (" ✓" if acc >= floor else " ✗")
            return f"{acc:.1%}{mark}"

        lines = ["| task | train | held-out |", "| --- | ---: | ---: |"]
        for task in TASKS:
            tr, ho = self.accuracy(task, "train"), self.accuracy(task, "heldout")
            if tr is None and ho is None:
                continue
            lines.append(
                f"| **{task}** | {cell(tr, task, 'train', True)} | {cell(ho, task, 'heldout', True)} |"
            )
            groups = self.groups(task)
            if len(groups) > 1:
                for g in groups:
                    a, b = self.accuracy(task, "train", g), self.accuracy(task, "heldout", g)
                    lines.append(
                        f"| &nbsp;&nbsp;{g} | {cell(a, task, 'train', False)} | {cell(b, task, 'heldout', False)} |"
                    )
        return "\n".join(lines)


def examine(judge: Judge, probes: Iterable[Probe], tasks: Sequence[str] | None = None) -> ExamScores:
    """Grade ``probes`` (those of ``tasks`` only, when given) with ``judge``."""
    chosen = [p for p in probes if tasks is None or p.task in tasks]
    scores = ExamScores()
    for probe, right in zip(chosen, judge(chosen), strict=True):
        scores.add(probe, bool(right))
    return scores

"""Zero-ablation of attention heads, and its effect on in-context copying.

:func:`ablate_heads` is a context manager that zeroes the chosen heads' columns of their layer's output
projection ``attn.o.weight`` (so each head's output, ``z_h W_O^h``, is zero; an output bias, which
belongs to no head, is kept) and restores the saved columns exactly on exit, exceptions included.

:func:`copying_accuracy` measures in-context copying on repeated random sequences: at every position
of the second repeat but its last, does the model's top next-token prediction equal the token that
followed the current token the first time (the next token of the repeat)? On a text, the same
question is asked where a token recurs with the same next token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clew.errors import ClewError
from clew.heads.motifs import Sequences, TextSequences
from clew.models.transformer import Transformer

Head = tuple[int, int]


def parse_head(text: str) -> Head:
    """``"3.5"`` or ``"L3H5"`` -> (3, 5)."""
    s = text.strip().upper().replace("L", "").replace("H", ".")
    try:
        layer, head = (int(part) for part in s.split("."))
    except ValueError:
        raise ClewError(f"cannot read head {text!r}: write LAYER.HEAD, e.g. 3.5") from None
    return layer, head


def check_heads(model: Transformer, heads: Iterable[Head]) -> list[Head]:
    cfg = model.cfg
    out = []
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ClewError(
                f"head {layer}.{head} does not exist: the model has {cfg.n_layers} layers of {cfg.n_heads} heads"
            )
        out.append((int(layer), int(head)))
    return out


@contextmanager
def ablate_heads(model: Transformer, heads: Iterable[Head]) -> Iterator[None]:
    """Within the block, the given (layer, head) pairs write nothing to the residual stream."""
    E = model.cfg.d_head
    saved = []
    try:
        with torch.no_grad():
            for layer, head in check_heads(model, heads):
                weight = model.blocks[layer].attn.o.weight  # (D, H*E)
                cols = slice(head * E, (head + 1) * E)
                saved.append((weight, cols, weight[:, cols].clone()))
                weight[:, cols] = 0
        yield
    finally:
        with torch.no_grad():
            for weight, cols, original in reversed(saved):  # reversed: a head listed twice ends original
                weight[:, cols] = original


@dataclass
class Copying:
    accuracy: float
    """Fraction of second-repeat positions whose top prediction is the repeat's next token."""
    loss: float
    """Mean cross-entropy of the repeat's next token there (nats)."""


@torch.no_grad()
def copying_accuracy(model: Transformer, seqs: Sequences, batch: int = 8) -> Copying:
    """On repeats, every second-repeat position but the last; on text, the positions the induction
    score is measured at (:class:`~clew.heads.motifs.TextSequences`)."""
    if isinstance(seqs, TextSequences):
        where = seqs.masks()[0]  # (B, P)
    else:
        o, R = seqs.offset, seqs.length
        where = torch.zeros(seqs.tokens.shape, dtype=torch.bool)
        where[:, o + R : o + 2 * R - 1] = True  # positions in the second repeat with a next token
    target = torch.cat([seqs.tokens[:, 1:], seqs.tokens[:, :1]], dim=1)  # (B, P) the next token
    hits, losses = [], []
    device = model.embed.weight.device
    for start in range(0, len(seqs.tokens), batch):
        rows = slice(start, start + batch)
        logits = model(seqs.tokens[rows].to(device)).float().cpu()  # (b, P, V)
        at = where[rows]
        picked, want = logits[at], target[rows][at]  # (n, V), (n,)
        hits.append((picked.argmax(-1) == want).float())
        losses.append(F.cross_entropy(picked, want, reduction="none"))
    return Copying(float(torch.cat(hits).mean()), float(torch.cat(losses).mean()))


@dataclass
class Ablation:
    heads: list[Head]
    clean: Copying
    ablated: Copying

    @property
    def accuracy_drop(self) -> float:
        return self.clean.accuracy - self.ablated.accuracy


def ablation_effect(model: Transformer, seqs: Sequences, heads: Iterable[Head]) -> Ablation:
    """In-context copying with and without the given heads."""
    heads = check_heads(model, heads)
    clean = copying_accuracy(model, seqs)
    with ablate_heads(model, heads):
        ablated = copying_accuracy(model, seqs)
    return Ablation(heads, clean, ablated)

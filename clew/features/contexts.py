"""A corpus cut into what the model runs on: documents into contexts, a block's contexts into batches.

1. Each document becomes ``[BOS] + tokens``, cut into *contexts* of at most ``ctx_len`` tokens (a
   continuation starts again with BOS). Contexts never cross documents, so an example is the start of
   its own document: what the model saw is exactly what is shown, and recomputing it needs nothing else.
2. A block's contexts are numbered in corpus order, sorted by length (stable) and cut into batches of
   about ``batch_tokens`` tokens (padding is masked out).

Both depend only on the documents and the settings, so a resumed collection cuts the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

SLACK = 0.8
"""A batch holds contexts of at least this fraction of its longest one's length (less padding)."""


class Corpus(Protocol):
    """Documents that can be read again from any document number."""

    name: str
    """What the corpus is, recorded in the store (a path or a built-in name)."""

    def documents(self, start: int) -> Iterator[str]:
        """The documents from number ``start`` on, in order."""
        ...


@dataclass
class Batch:
    """Contexts run in one forward pass, padded to the longest."""

    tokens: Tensor
    """``[B, P]`` token ids (padding: 0)."""
    lengths: Tensor
    """``[B]`` real tokens per row."""
    contexts: Tensor
    """``[B]`` context numbers."""


def block_contexts(tok: Any, docs: list[str], ctx_len: int) -> list[list[int]]:
    """A block of documents tokenised by ``tok``, each with its BOS (when the tokenizer has one), cut
    into contexts (:func:`contexts_of`), in corpus order."""
    bos = getattr(tok, "bos_token_id", None)
    return [
        c
        for doc in _tokenise(tok, docs)
        for c in contexts_of([bos, *doc] if bos is not None else doc, bos, ctx_len)
    ]


def contexts_of(ids: list[int], bos: int | None, ctx_len: int) -> list[list[int]]:
    """A document's token ids (its BOS included) cut into contexts; each continuation starts with BOS."""
    if bos is None or len(ids) <= ctx_len:
        return [ids[i : i + ctx_len] for i in range(0, len(ids), ctx_len)]
    out, body = [ids[:ctx_len]], ids[ctx_len:]
    step = ctx_len - 1
    out += [[bos, *body[i : i + step]] for i in range(0, len(body), step)]
    return out


def batches(contexts: list[list[int]], first: int, batch_tokens: int) -> list[Batch]:
    """One block's contexts (numbered from ``first``) sorted by length and cut into padded batches."""
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    out, i = [], 0
    while i < len(order):
        P = len(contexts[order[i]])
        rows = max(1, batch_tokens // P)
        chunk = order[i : i + rows]
        # a batch ends where its contexts get much shorter than its longest: padding costs a full token
        short = [r for r, j in enumerate(chunk) if len(contexts[j]) < SLACK * P]
        if short:
            chunk = chunk[: short[0]]
            rows = len(chunk)
        toks = torch.zeros(len(chunk), P, dtype=torch.long)
        for r, j in enumerate(chunk):
            toks[r, : len(contexts[j])] = torch.tensor(contexts[j])
        out.append(
            Batch(
                toks,
                torch.tensor([len(contexts[j]) for j in chunk]),
                torch.tensor([first + j for j in chunk], dtype=torch.long),
            )
        )
        i += rows
    return out


def _tokenise(tok: Any, texts: list[str]) -> list[list[int]]:
    if hasattr(tok, "batch_decode"):
        return [list(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    return [list(tok.encode(t)) for t in texts]

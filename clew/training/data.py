"""Training data: text in, shuffled batches of (read-point input, write-point target) activations out.

The pipeline, and why it is shaped this way:

1. **Documents.** :func:`open_text` reads a ``.txt`` file (documents are paragraphs, separated by blank
   lines), a ``.jsonl`` file (one document per line, in field ``text_field``), a ``.parquet`` file (column
   ``text_field``; needs ``pyarrow``), a folder of such files (recursively, in name order), or a Hugging
   Face dataset (needs ``datasets``). Every document has a *position* from which reading can restart
   without rereading what came before (a byte offset, a row, a count).
2. **Shards.** Document ``i`` belongs to shard ``i mod S`` (``S = data_shards``). A shard's documents are
   tokenised, each preceded by the beginning-of-sequence token (or followed by the end-of-sequence
   token when the tokenizer has no BOS), concatenated, and cut into contexts of ``ctx_len`` tokens,
   each starting with BOS. A process reads only its own shards: ``r, r + W, r + 2W, ...`` of ``W``.
3. **Blocks.** Each shard contributes the same number of contexts to a *block*. The model runs over
   them (one shard at a time, ``model_batch`` contexts per pass, stopping after the last layer
   needed) and the activations at every position but the BOS at position 0 are kept. Each shard's
   tokens are shuffled by a permutation seeded from ``(seed, block, shard)``, then served in slices;
   the global batch of step ``t`` is the ``t``-th slice of every shard, in shard order.

Hence the batches do not depend on the number of processes (any divisor of ``S``), a block is rebuilt
exactly from the shards' positions at its start (what a checkpoint stores), and no process touches
another's documents (it still skims past them in a shared file, without parsing or tokenising them).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clew.errors import ClewError
from clew.models.capture import capture

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class DocPos:
    """Where a document starts: file number, offset in that file (bytes or rows), and document number."""

    file: int = 0
    offset: int = 0
    index: int = 0


# ----- documents ---------------------------------------------------------------------------------------


class TextSource:
    """Documents from files or a dataset, readable from any :class:`DocPos`."""

    def __init__(self, spec: str, *, text_field: str = "text", split: str = "train"):
        self.spec, self.text_field, self.split = spec, text_field, split
        self.files: list[Path] = []
        self.dataset: Any = None
        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix not in TEXT_SUFFIXES:
                known = ", ".join(TEXT_SUFFIXES)
                raise ClewError(f"{spec}: unsupported file type {path.suffix!r} (known: {known})")
            self.files = [path]
        elif path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not self.files:
                raise ClewError(f"{spec}: no {', '.join(TEXT_SUFFIXES)} files in this folder")
        else:
            self.dataset = _hf_dataset(spec, split)
        for p in self.files:
            if p.suffix == ".parquet":
                _pyarrow(p)

    def documents(self, start: DocPos, wanted: Callable[[int], bool]) -> Iterator[tuple[DocPos, str]]:
        """``(position, text)`` of the documents from ``start`` on whose number passes ``wanted``; the
        others are counted but neither parsed nor returned."""
        if self.dataset is not None:
            yield from self._dataset_docs(start, wanted)
            return
        index = start.index
        for f in range(start.file, len(self.files)):
            offset = start.offset if f == start.file else 0
            reader = self._parquet_docs if self.files[f].suffix == ".parquet" else self._line_docs
            for pos, text in reader(f, offset, index, wanted):
                index = pos.index + 1
                if text is not None:
                    yield pos, text

    def _line_docs(
        self, f: int, offset: int, index: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[DocPos, str | None]]:
        """Documents of a .txt (paragraphs) or .jsonl (lines) file from byte ``offset``; unwanted ones
        come with ``None`` for the text."""
        path = self.files[f]
        jsonl = path.suffix == ".jsonl"
        lines: list[bytes] = []
        start = pos = offset
        with open(path, "rb") as fh:
            fh.seek(offset)
            for line in iter(fh.readline, b""):
                here, pos = pos, pos + len(line)
                blank = not line.strip()
                if jsonl:
                    if not blank:
                        yield (
                            DocPos(f, here, index),
                            self._json_text(path, line, here) if wanted(index) else None,
                        )
                        index += 1
                    continue
                if not blank:
                    start = here if not lines else start
                    lines.append(line)
                elif lines:
                    yield DocPos(f, start, index), _join(lines) if wanted(index) else None
                    index, lines = index + 1, []
        if lines:
            yield DocPos(f, start, index), _join(lines) if wanted(index) else None

    def _json_text(self, path: Path, line: bytes, offset: int) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ClewError(f"{path}: byte {offset}: not valid JSON ({err.msg})") from None
        text = record.get(self.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ClewError(f"{path}: byte {offset}: no text field {self.text_field!r} in this record")
        return text

    def _parquet_docs(
        self, f: int, row: int, index: int, wanted: Callable[[int], bool]
    ) -> Iterator[tuple[DocPos, str | None]]:
        path = self.files[f]
        pf = _pyarrow(path).ParquetFile(path)
        if self.text_field not in pf.schema_arrow.names:
            raise ClewError(
                f"{path}: no column {self.text_field!r} (columns: {', '.join(pf.schema_arrow.names)})"
            )
        first = 0
        for group in range(pf.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            if first + n > row:
                column = pf.read_row_group(group, columns=[self.text_field]).column(0).to_pylist()
                for i in range(max(row - first, 0), n):
                    yield DocPos(f, first + i, index), (column[i] or "") if wanted(index) else None
                    index += 1
            first += n

    def _dataset_docs(self, start: DocPos, wanted: Callable[[int], bool]) -> Iterator[tuple[DocPos, str]]:
        ds = self.dataset.skip(start.index) if start.index else self.dataset
        for index, record in enumerate(ds, start=start.index):
            if not wanted(index):
                continue
            text = record.get(self.text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ClewError(f"{self.spec}: record {index} has no text field {self.text_field!r}")
            yield DocPos(0, index, index), text


def _join(lines: list[bytes]) -> str:
    return b"".join(lines).decode("utf-8", errors="replace")


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ClewError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    return pq


def _hf_dataset(name: str, split: str) -> Any:
    looks_local = (
        name.startswith((".", "/", "~")) or Path(name).suffix in TEXT_SUFFIXES or name.count("/") > 1
    )
    if looks_local:
        raise ClewError(f"{name}: no such file or folder")
    try:
        import datasets
    except ImportError:
        raise ClewError(
            f"{name}: no such file or folder, and the datasets package (pip install datasets) is not "
            "installed to fetch it as a Hugging Face dataset"
        ) from None
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # network, unknown name, bad split: one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClewError(f"{name}: cannot open as a file, folder or Hugging Face dataset ({first})") from None


def open_text(spec: str, *, text_field: str = "text", split: str = "train") -> TextSource:
    """The documents of ``spec`` (a file, a folder or a Hugging Face dataset name)."""
    return TextSource(spec, text_field=text_field, split=split)


# ----- one shard's contexts ----------------------------------------------------------------------------


@dataclass
class ShardState:
    """The next unused token of a shard: its document, how many of that document's tokens (BOS included)
    are used up, and the epoch (passes over the data so far)."""

    doc: DocPos
    used: int = 0
    epoch: int = 0


class ShardReader:
    """Contexts of ``ctx_len`` tokens from the documents of one shard, resumable from a :class:`ShardState`.

    Each document becomes ``[BOS] + tokens`` (or ``tokens + [EOS]`` for a tokenizer without BOS); every
    context starts with BOS when there is one (a document's own BOS is not repeated there).
    """

    def __init__(
        self,
        source: TextSource,
        tokenizer: Any,
        shard: int,
        n_shards: int,
        ctx_len: int,
        state: ShardState | None = None,
    ):
        self.source, self.tok = source, tokenizer
        self.shard, self.n_shards, self.ctx_len = shard, n_shards, ctx_len
        self.bos: int | None = getattr(tokenizer, "bos_token_id", None)
        self.eos: int | None = getattr(tokenizer, "eos_token_id", None)
        self.state = state or ShardState(DocPos())
        self._queue: deque[tuple[DocPos, list[int]]] = deque()  # documents read ahead, tokenised
        self._docs: Iterator[tuple[DocPos, str]] | None = None
        self._from_start = False  # the open iterator began at the start of the data
        self._read = 0  # documents read since the iterator was opened

    def _mine(self, index: int) -> bool:
        return index % self.n_shards == self.shard

    def _read_more(self) -> bool:
        """Tokenise the next few documents of this shard into the queue; False at the end of the data."""
        if self._docs is None:
            self._docs = self.source.documents(self.state.doc, self._mine)
            self._from_start, self._read = self.state.doc == DocPos(), 0
        batch = [doc for _, doc in zip(range(32), self._docs)]  # range first: no document is dropped
        if not batch:
            return False
        self._read += len(batch)
        for (pos, _), ids in zip(batch, self._tokenise([text for _, text in batch])):
            if self.bos is not None:
                ids = [self.bos, *ids]
            elif self.eos is not None:
                ids = [*ids, self.eos]
            self._queue.append((pos, ids))
        return True

    def _tokenise(self, texts: list[str]) -> list[list[int]]:
        if hasattr(self.tok, "batch_decode"):  # a transformers tokenizer: tokenise the batch at once
            return [list(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]
        return [list(self.tok.encode(text)) for text in texts]

    def _head(self) -> tuple[DocPos, list[int]]:
        """The document holding the next unused token, wrapping around to a new epoch at the end."""
        while not self._queue:
            if self._read_more():
                break
            if self._from_start and self._read == 0:
                raise ClewError(
                    f"{self.source.spec}: shard {self.shard} of {self.n_shards} gets no documents (the data "
                    "has fewer documents than data_shards); lower data_shards"
                )
            self.state, self._docs = ShardState(DocPos(), 0, self.state.epoch + 1), None
        pos, toks = self._queue[0]
        if pos != self.state.doc:  # a fresh start, where the first document belongs to another shard
            self.state = ShardState(pos, 0, self.state.epoch)
        return pos, toks

    def contexts(self, n: int) -> Tensor:
        """The next ``n`` contexts, ``[n, ctx_len]`` token ids."""
        return torch.tensor([self._context() for _ in range(n)], dtype=torch.long)

    def _context(self) -> list[int]:
        ctx = [] if self.bos is None else [self.bos]
        while len(ctx) < self.ctx_len:
            pos, toks = self._head()
            used = self.state.used
            if used == 0 and len(ctx) == 1 and self.bos is not None:
                used = 1  # this document's BOS is the context's
            take = toks[used : used + self.ctx_len - len(ctx)]
            ctx.extend(take)
            used += len(take)
            if used < len(toks):
                self.state = ShardState(pos, used, self.state.epoch)
            else:
                self._queue.popleft()
                self._head()  # moves the state to the next document (of a new epoch, at the end)
        return ctx


# ----- activations ----------------------------------------------------------------------------------


@torch.no_grad()
def activations(
    model: Any, tokens: Tensor, layers: list[int], read: str, write: str
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``tokens`` ``[B, P]`` up to the last of ``layers``; returns the read-point inputs
    and write-point targets, each ``[B, P, n, d]`` in float32 (``n = len(layers)``)."""
    inputs, outputs = capture(model, tokens, layers, read, write)
    x = torch.stack([inputs[layer] for layer in layers], dim=2).float()
    y = torch.stack([outputs[layer] for layer in layers], dim=2).float()
    return x, y


@dataclass
class StreamState:
    """What a checkpoint stores of the data: the block being served, the next batch in it, and each
    shard's position at the block's start (all shards, gathered from every process)."""

    block: int
    batch: int
    shards: dict[int, ShardState]

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "batch": self.batch,
            "shards": {s: asdict(st) for s, st in self.shards.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamState:
        shards = {
            int(s): ShardState(DocPos(**st["doc"]), st["used"], st["epoch"]) for s, st in d["shards"].items()
        }
        return cls(int(d["block"]), int(d["batch"]), shards)


class ActivationStream:
    """Shuffled batches of activations for this process's shards; see the module docstring.

    ``next_batch()`` returns ``(x, y)``, each ``[B_local, n, d]`` float32 on ``device``, where ``B_local =
    batch_size / data_shards * len(shards)``: this process's part of the global batch.
    """

    def __init__(
        self,
        model: Any,
        source: TextSource,
        tokenizer: Any,
        *,
        layers: list[int],
        read: str,
        write: str,
        ctx_len: int,
        batch_size: int,
        buffer_tokens: int,
        n_shards: int,
        shards: list[int],
        model_batch: int,
        skip_bos: bool,
        seed: int,
        device: torch.device,
        state: StreamState | None = None,
    ):
        self.model, self.source, self.tok = model, source, tokenizer
        self.layers, self.read, self.write = layers, read, write
        self.shards, self.n_shards = shards, n_shards
        self.model_batch, self.seed, self.device = model_batch, seed, device
        self.drop_first = skip_bos and getattr(tokenizer, "bos_token_id", None) is not None
        per_context = ctx_len - int(self.drop_first)
        self.shard_batch = batch_size // n_shards  # tokens of each shard in a global batch
        self.block_contexts = math.ceil(buffer_tokens / n_shards / per_context)  # per shard
        self.batches_per_block = self.block_contexts * per_context // self.shard_batch
        self.readers = {
            s: ShardReader(source, tokenizer, s, n_shards, ctx_len, state.shards[s] if state else None)
            for s in shards
        }
        self.block = state.block if state else 0
        self.batch = state.batch if state else 0
        self._start = {s: r.state for s, r in self.readers.items()}  # shard positions at the block start
        self._data: dict[int, tuple[Tensor, Tensor]] | None = None

    def state(self) -> StreamState:
        """This process's part of the data position (merge the shards of every process for a checkpoint)."""
        if self._data is None:  # the block has not been built: the readers stand at its start
            self._start = {s: r.state for s, r in self.readers.items()}
        return StreamState(self.block, self.batch, dict(self._start))

    def _build(self) -> None:
        """Compute, for each own shard, the activations of the current block, shuffled."""
        self._start = {s: r.state for s, r in self.readers.items()}
        self._data = {}
        for s, reader in self.readers.items():
            tokens = reader.contexts(self.block_contexts)  # [C, P]
            special = {reader.bos, reader.eos} - {None}
            if len(set(tokens.unique().tolist()) - special) < 2:
                raise ClewError(
                    f"{reader.source.spec}: the text gives fewer than 2 distinct tokens (besides BOS and EOS); "
                    "there is nothing to learn from"
                )
            xs, ys = [], []
            for chunk in tokens.split(self.model_batch):
                x, y = activations(self.model, chunk.to(self.device), self.layers, self.read, self.write)
                if self.drop_first:
                    x, y = x[:, 1:], y[:, 1:]
                xs.append(x.flatten(0, 1))  # [b * P', n, d]
                ys.append(y.flatten(0, 1))
            x, y = torch.cat(xs), torch.cat(ys)
            perm = torch.randperm(x.shape[0], generator=_generator(self.seed, self.block, s)).to(self.device)
            self._data[s] = (x[perm], y[perm])

    def peek(self) -> tuple[Tensor, Tensor]:
        """All of the current block's tokens of this process, ``[T, n, d]`` each (to estimate scales)."""
        if self._data is None:
            self._build()
        assert self._data is not None
        return torch.cat([v[0] for v in self._data.values()]), torch.cat([v[1] for v in self._data.values()])

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self._data is None:
            self._build()
        assert self._data is not None
        sl = slice(self.batch * self.shard_batch, (self.batch + 1) * self.shard_batch)
        x = torch.cat([self._data[s][0][sl] for s in self.shards])
        y = torch.cat([self._data[s][1][sl] for s in self.shards])
        self.batch += 1
        if self.batch == self.batches_per_block:
            self.block, self.batch, self._data = self.block + 1, 0, None
        return x, y

    def eval_tokens(self, n: int) -> Tensor:
        """``[n, ctx_len]`` contexts after the training data (round robin over own shards)."""
        order = [self.readers[s] for s in self.shards]
        return torch.cat([order[i % len(order)].contexts(1) for i in range(n)])


def _generator(seed: int, block: int, shard: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, block, shard]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

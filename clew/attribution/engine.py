"""The attribution engine: the exact linear backward pass of a prompt's local replacement model.

:class:`~clew.replacement.LocalReplacement` runs the model once, freezes what is nonlinear and lays
out the nodes. Between nodes the model is then linear, so the direct effect of every source on a
target is the target's vector carried backwards through the frozen residual stream, dotted with the
source's vector where the source writes. ``Engine.rows`` does that for a batch of targets at once,
with the transposes of :class:`~clew.replacement.Backward` rather than autograd: no MLP, no forward
replicated per target, no work above a target's layer or after its position, and at each layer's
write point one batched matrix product fills whole rows of the adjacency matrix.

Shapes: B targets in a batch, P positions, D d_model, C columns (sources).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

from clew.replacement import LocalReplacement, Targets

__all__ = ["Engine", "Targets"]


@contextmanager
def one_thread_each() -> Iterator[None]:
    """Operations on one thread each while inside (torch's thread count is the process's): the chunks
    of a batch then run in parallel threads of their own, each never waiting at a barrier for a
    partner. On a busy machine a descheduled partner stalls every barrier of a shared operation; here
    a slow thread only delays its own chunk."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Engine(LocalReplacement):
    """A prompt's local replacement model that computes rows of the adjacency matrix: the direct
    effect of every source (column) on a batch of targets."""

    # The gradient is kept position-major, (P, B, D): every product below is then one large matrix
    # product (or one per head), never thousands of tiny ones.

    @staticmethod
    def batch_order(layer: Tensor, pos: Tensor) -> tuple[Tensor, list[int]]:
        """The order in which :meth:`rows` processes a batch, and the sizes of its chunks.

        The batch is split by position into up to 8 chunks, so that targets early in the prompt do
        not pay for the positions after them (attention costs grow with the square of the positions
        covered); within a chunk, targets go from the highest layer down, so that at each layer only
        the leading targets, those at or above it, are carried (nothing below a target's layer
        reaches it). A caller that passes targets already in this order gets its rows written in place."""
        B = len(pos)
        by_pos = torch.argsort(pos, stable=True)
        sizes = [len(c) for c in by_pos.chunk(max(1, min(8, B // 32)))] if B else []
        parts, start = [], 0
        for n in sizes:
            chunk = by_pos[start : start + n]
            parts.append(chunk[torch.argsort(layer[chunk], descending=True, stable=True)])
            start += n
        order = torch.cat(parts) if parts else by_pos
        return order, sizes

    def rows(self, targets: Targets, out: Tensor | None = None) -> Tensor:
        """(B, C) the direct effect of every source on each target, written into ``out`` when given
        (in place, chunk by chunk, when the targets come in :meth:`batch_order`)."""
        B = len(targets)
        if out is None:
            out = torch.zeros(B, self.n_columns, dtype=self.dtype, device=self.device)
        else:
            out.zero_()
        order, sizes = self.batch_order(targets.layer, targets.pos)
        in_place = bool((order == torch.arange(B, device=order.device)).all())
        starts = [sum(sizes[:i]) for i in range(len(sizes))]

        @torch.no_grad()
        def chunk_rows(i: int) -> None:
            chunk = order[starts[i] : starts[i] + sizes[i]]
            part = Targets(targets.layer[chunk], targets.pos[chunk], targets.vectors[chunk])
            if in_place:
                self._rows(part, out[starts[i] : starts[i] + sizes[i]])
            else:
                out[chunk] = self._rows(
                    part, torch.zeros(sizes[i], self.n_columns, dtype=self.dtype, device=self.device)
                )

        workers = min(torch.get_num_threads(), len(sizes)) if self.device.type == "cpu" else 1
        if workers <= 1:
            for i in range(len(sizes)):
                chunk_rows(i)
            return out
        for layer in range(self.n_layers):  # prepared once, before the threads share them
            self.backward.weights(layer)
        # the chunks run side by side, one thread each, latest positions (the costliest) first
        with one_thread_each(), ThreadPoolExecutor(workers, thread_name_prefix="clew-rows") as pool:
            list(pool.map(chunk_rows, reversed(range(len(sizes)))))
        return out

    def _rows(self, targets: Targets, rows: Tensor) -> Tensor:
        """Fill ``rows`` (B, C), zero on entry, for a batch of targets sorted by descending layer.

        At each layer only the leading targets whose layer is at or above it are carried: ``grad[:, :n]``."""
        L, D, dt = self.n_layers, self.d_model, self.dtype
        B = len(targets)
        P = int(targets.pos.max()) + 1  # nothing after the last target position matters
        grad = torch.zeros(P, B, D, dtype=dt, device=self.device)
        batch = torch.arange(B, device=self.device)
        layers = targets.layer.tolist()
        assert all(a >= b for a, b in zip(layers, layers[1:])), "targets must come by descending layer"
        negated = [-t for t in layers]  # ascending, for bisection
        start = min(layers[0], L - 1)  # above the highest target nothing is written that it could see

        def inject(a: int, b: int) -> None:  # targets a..b-1 start here
            grad[targets.pos[a:b], batch[a:b]] += targets.vectors[a:b].to(dt)

        back = self.backward
        inject(0, bisect.bisect_left(negated, -start))  # targets read after the last layer (logits)
        for layer in range(start, -1, -1):
            above = bisect.bisect_left(negated, -layer)  # targets above this layer's write point
            if above:
                back.contract(layer, grad[:, :above], rows[:above], self.sources[layer])
                if self.tc.cfg.skip:
                    grad[:, :above] += back.skip_t(layer, grad[:, :above])
            reach = bisect.bisect_right(negated, -layer)  # and those reading at this layer
            inject(above, reach)
            grad[:, :reach] += back.attention_t(layer, grad[:, :reach])
        rows[:, self.embed_offset : self.embed_offset + P] = torch.einsum(
            "pbd,pd->bp", grad, self.embeddings[:P].to(dt)
        )
        return rows

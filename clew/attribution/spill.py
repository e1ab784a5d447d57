"""Adjacency rows too large for memory, kept in a file instead.

A budgeted trace keeps one row per chosen node over every source: budget x columns floats, and the
columns grow with the prompt (about 1.5 million on a 4,096-token SmolLM2 prompt, so 25 GB for a budget
of 4,096). When the rows would take more than half of the memory the system reports available, they
live in a temporary file mapped into memory: the kernel writes them out as they are made and reads
them back as the influence ranking and the graph's assembly pass over them. The file is removed from
its folder as soon as it is mapped, so nothing is left behind, even by a process that is killed.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from clew.errors import ClewError


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's ``MemAvailable``); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def should_spill(n_bytes: int) -> bool:
    """Whether ``n_bytes`` of rows are better kept in a file: more than half of the available memory."""
    free = available_memory()
    return free is not None and n_bytes > free // 2


def zeros_for_rows(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, folder: str | Path | None = None
) -> tuple[Tensor, bool]:
    """Zeros for rows of ``shape``: in memory, or on a CPU in a file in ``folder`` when
    :func:`should_spill` says so; and whether they went to a file."""
    on_disk = device.type == "cpu" and should_spill(math.prod(shape) * dtype.itemsize)
    if on_disk:
        return zeros_on_disk(shape, dtype, folder), True
    return torch.zeros(shape, dtype=dtype, device=device), False


def zeros_on_disk(shape: tuple[int, ...], dtype: torch.dtype, folder: str | Path | None = None) -> Tensor:
    """A tensor of zeros backed by a fresh file in ``folder`` (the system's temporary folder when None),
    which is unlinked at once: its pages go to disk under memory pressure and the space is freed when
    the tensor is."""
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    n = math.prod(shape)
    n_bytes = n * dtype.itemsize
    try:
        fd, path = tempfile.mkstemp(prefix=".clew-rows-", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ClewError(f"cannot make a file for the adjacency rows in {folder}: {e.strerror}") from None
    try:
        os.ftruncate(fd, n_bytes)  # sparse: blocks are taken as rows are written
        os.close(fd)
        out = torch.from_file(path, shared=True, size=n, dtype=dtype)
    finally:
        Path(path).unlink(missing_ok=True)
    return out.view(shape)

"""Reading a user's JSON and YAML files with one-line errors, and writing files whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clew.errors import ClewError


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file or bad JSON is a one-line error."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClewError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ClewError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(obj, dict):
        raise ClewError(f"{path}: expected a JSON object")
    return obj


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or bad YAML is a one-line error."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ClewError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ClewError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise ClewError(f"{path}: expected a mapping of fields at the top level")
    return config


def contained(root: Path, name: str, what: str) -> Path:
    """``root / name`` for a file name read from a file inside ``root`` (a dictionary's config, a model's
    index): an absolute path, ``..`` or a link that leads outside ``root`` is a one-line error naming
    ``what`` (the file and field the name came from)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ClewError(f"{what}: {name!r} is not a file name")
    root = Path(root)
    path = root / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise ClewError(f"{what}: {name!r} is outside the folder {root}; only files inside it are read")
    return path


def check_out_dir(path: Path, flag: str = "--out") -> Path:
    """Before any work: ``path`` is a folder clew can write in, or can be made (its nearest existing
    parent is a writable folder). A file in the way, a file above it or no permission is a one-line
    error naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ClewError(f"{flag} {path}: exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ClewError(f"{flag} {path}: {probe} is a broken link")
        probe = probe.parent
    if not probe.is_dir():
        raise ClewError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ClewError(f"{flag} {path}: {probe} is not writable")
    return path


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove the temporary files that :func:`replacing` left for ``folder / name`` when a process was
    killed before it could clean up (``.<name>.<random>.tmp``)."""
    if folder.is_dir():
        for pattern in (f".{glob_escape(name)}.*.tmp", f"..{glob_escape(name)}.*.tmp"):  # and nested ones
            for tmp in folder.glob(pattern):
                if tmp.is_file() and not tmp.is_symlink():
                    tmp.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a fresh temporary file beside it (never a planted link),
    renamed into place: a reader sees the old file or the new one, never half of either."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` (created by ``mkstemp``, so never a planted link) for a
    writer that wants a file name; renamed onto ``path`` when the block ends without error, removed
    otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

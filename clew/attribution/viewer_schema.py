"""What clew's writer and reader of the viewers' graph JSON share: the schema's constants, node ids,
slugs and scans, and the folder's ``graph-metadata.json`` index.

The viewers are Neuronpedia's and circuit-tracer's attribution-graph viewers;
:mod:`clew.attribution.export` writes their JSON and :mod:`clew.attribution.viewer_import` reads it.

Node ids written by clew (``jsNodeId`` is always equal to ``node_id``), and their ``feature`` field:

- feature: ``"{layer}_{index}_{pos}"``, the Cantor pairing of (layer, index);
- error: ``"{layer}_-1_{pos}"``, -1;
- embedding: ``"E_{token_id}_{pos}"``, the token id;
- logit: ``"{n_layers + 1}_{token_id}_{pos}"``, the token id (-1 for a custom direction).

The older error id ``"0_{layer}_{pos}"`` is read but never written: it is the id of the layer-0 feature
with index ``layer`` at the same position. ``"{layer}_-1_{pos}"`` (what current circuit-tracer writes)
cannot collide with anything: no feature has index -1, nothing but logits lives at layer
``n_layers + 1``, and only embedding ids start with ``E``. A logit id that would repeat (the same
token twice) gets its index among the logits as a suffix, ``_{j}``.

A slug names a graph file, ``<slug>.json``, and its entry in ``graph-metadata.json`` (the folder's
index, ``{"graphs": [...]}``, one entry per slug); a scan names the model for Neuronpedia.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from clew.attribution.graph import Graph
from clew.errors import ClewError
from clew.files import write_atomic

SCHEMA_VERSION = 1
FEATURE_TYPE = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "embedding": "embedding",
    "logit": "logit",
}
HEAD_FEATURE_TYPE = "lorsa"
"""The ``feature_type`` of a head node: the viewers' type for an attention-side node (Neuronpedia draws
its attention dictionaries' units with it); not an error type, so the viewers keep its ``clerp``."""
# what import_json accepts: the four above, and the viewers' "unexplored node" (a feature)
KIND_OF_TYPE = {v: k for k, v in FEATURE_TYPE.items()} | {"unexplored node": "feature"}
INDEX_FILE = "graph-metadata.json"
SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SCAN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


# --- ids and numbers ---------------------------------------------------------------------------------------


def cantor(x: int, y: int) -> int:
    """Cantor pairing ``(x+y)(x+y+1)/2 + y``: the viewers' ``feature`` of (layer, index)."""
    return (x + y) * (x + y + 1) // 2 + y


def uncantor(z: int) -> tuple[int, int]:
    """The (x, y) whose Cantor pairing is ``z``."""
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def round6(x: float) -> float | None:
    """``x`` to 6 significant digits; None for NaN and infinities (JSON has no such numbers)."""
    return float(f"{x:.6g}") if math.isfinite(x) else None


def top_logit(graph: Graph) -> int:
    """Index (among the logits) of the most probable logit target; the first one on ties."""
    return int(torch.argmax(graph.logit_probs)) if graph.n_logits else -1


def node_ids(graph: Graph) -> dict[int, str]:
    """The viewer id of every node (see the module docstring); unique by construction."""
    P, L = graph.n_pos, graph.n_layers
    ids: dict[int, str] = {}
    for i, (layer, pos, index) in enumerate(graph.features.tolist()):
        ids[i] = f"{layer}_{index}_{pos}"
    for e in range(L * P):
        layer, pos = divmod(e, P)
        ids[graph.error_offset + e] = f"{layer}_-1_{pos}"
    for pos, tok in enumerate(graph.tokens.tolist()):
        ids[graph.embed_offset + pos] = f"E_{tok}_{pos}"
    seen: set[str] = set()
    for j, tok in enumerate(graph.logit_tokens.tolist()):
        nid = f"{L + 1}_{tok}_{P - 1}"
        if nid in seen:
            nid = f"{nid}_{j}"
        seen.add(nid)
        ids[graph.logit_offset + j] = nid
    return ids


# --- slugs and scans ---------------------------------------------------------------------------------------


def slug_from(text: str, max_len: int = 48) -> str:
    """A slug the viewers accept, from a prompt: lower-case ASCII letters, digits and dashes. Letters and
    digits outside ASCII are dropped, and then a short hash of the text is added, so that two prompts
    in another script do not share a slug."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    if any(c.isalnum() and not c.isascii() for c in text):
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: max_len - 9]}-{digest}".strip("-")
    return slug or "graph"


def check_slug(slug: str) -> str:
    """``slug`` if the viewers accept it (and it names a file inside its folder), else a one-line error."""
    if not SLUG_RE.match(slug):
        raise ClewError(f"slug {slug!r}: use letters, digits, '.', '_' and '-' only (at most 128)")
    return slug


def public_name(text: str) -> str:
    """A name fit for a file meant to be shared: a local path becomes its last part (never the path
    itself, which tells where the user keeps things); hub ids and built-in names stay as they are."""
    text = str(text or "")
    if not text or text.startswith("hf://"):
        return text
    path = Path(text).expanduser()
    if path.is_absolute() or text.startswith((".", "~")) or path.exists():
        path = path.resolve()
        generic = path.name in (
            "config.yaml",
            "cfg.json",
            "config.json",
        )  # a folder's own config: name the folder
        return path.parent.name if generic else path.name
    return text


def scan_from(name: str) -> str:
    """A ``scan`` the viewers accept (``[A-Za-z0-9_.-]``), from a model name, hub id or path: its last
    part, other characters turned into ``-``."""
    last = public_name(name).rstrip("/").rsplit("/", 1)[-1]
    scan = re.sub(r"[^A-Za-z0-9_.-]+", "-", last).strip("-.")[:128]
    return scan or "unknown"


def check_scan(scan: str) -> str:
    """``scan`` if Neuronpedia accepts it, else a one-line error."""
    if not SCAN_RE.match(scan):
        raise ClewError(f"scan {scan!r}: use letters, digits, '.', '_' and '-' only (at most 128)")
    return scan


# --- the index, graph-metadata.json ------------------------------------------------------------------------


def read_index(path: Path) -> dict[str, Any]:
    """``graph-metadata.json`` (``{"graphs": []}`` when there is none); a damaged one is a one-line
    error, which ``clew trace`` checks before it computes or writes anything."""
    if not path.exists():
        return {"graphs": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ClewError(f"{path}: not valid JSON ({type(err).__name__})") from None
    except OSError as err:
        raise ClewError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(data, dict) or not isinstance(data.get("graphs"), list):
        raise ClewError(f"{path}: field 'graphs' is missing or not a list")
    return data


def update_index(path: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the ``graphs`` list of ``graph-metadata.json``, replacing one with the same slug."""
    data = read_index(path)
    graphs = data["graphs"]
    same = [i for i, g in enumerate(graphs) if isinstance(g, dict) and g.get("slug") == entry["slug"]]
    if same:
        graphs[same[0]] = entry
        data["graphs"] = [g for i, g in enumerate(graphs) if i not in same[1:]]
    else:
        graphs.append(entry)
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

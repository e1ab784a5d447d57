"""Graph JSON for the attribution-graph viewers (Neuronpedia's and circuit-tracer's), written and read.

:func:`export_json` writes a graph's pruned view (an :class:`~clew.attribution.analysis.Analysis`) to
``<slug>.json`` in the viewers' schema (version 1, top-level ``metadata``, ``qParams``, ``nodes``,
``links``), then adds or replaces the slug's entry in ``graph-metadata.json`` in the same folder. :func:`import_json` reads such a file, whether written by
clew, by circuit-tracer or downloaded from Neuronpedia, back into a :class:`Graph`.

Node ids written by clew (``jsNodeId`` is always equal to ``node_id``), and their ``feature`` field:

- feature: ``"{layer}_{index}_{pos}"``, the Cantor pairing of (layer, index);
- error: ``"{layer}_-1_{pos}"``, -1;
- embedding: ``"E_{token_id}_{pos}"``, the token id;
- logit: ``"{n_layers + 1}_{token_id}_{pos}"``, the token id (-1 for a custom direction).

The older error id ``"0_{layer}_{pos}"`` is read but never written: it is the id of the layer-0 feature
with index ``layer`` at the same position. ``"{layer}_-1_{pos}"`` (what current circuit-tracer writes)
cannot collide with anything: no feature has index -1, nothing but logits lives at layer
``n_layers + 1``, and only embedding ids start with ``E``. A logit id that would repeat (the same
token twice) gets its index among the logits as a suffix, ``_{j}``. On import, kinds come from ``feature_type`` only, never from the
shape of an id.

Head nodes (``export_json(..., heads=...)``, a :class:`~clew.attribution.head_graph.HeadGraph`): id
``"A{layer}_{head}_{pos}"``, ``feature_type`` ``"lorsa"`` (the viewers' attention-node type; it is no
error type, so the viewers keep the ``clerp``, and a unique negative ``feature``, ``-2 - i``, keeps
circuit-tracer's viewer from merging or hiding the same head at several positions), ``layer`` the
head's layer, ``ctx_idx`` the query position, ``clerp`` like ``head L2.H4@26 <- @10 ' Wen' 0.94``,
``activation`` the sum of its outgoing links, ``influence`` the smallest cumulative influence of the
targets it feeds. ``metadata.info.heads.node_ids`` lists them; :func:`import_json` drops them (and
their links) and reads the rest.

Size: floats are rounded to 6 significant digits and the JSON is compact, one node or link a line. Only
the nodes and edges the analysis kept are written.

``influence`` is each node's cumulative influence fraction at its rank among every node, embeddings
included (``Pruned.cumulative``, ranked as circuit-tracer ranks them); the viewers' slider shows the
nodes whose value is at most the threshold. Logits (always kept, no influence of their own) get 0.0.

Stale caches: ``metadata.info.content_hash`` (also in the ``graph-metadata.json`` entry) is the first 12
hex digits of the SHA-256 of the nodes and links as written. A viewer that fetches
``<slug>.json?v=<content_hash>`` never shows an old graph when a slug is reused.

``qParams`` (the viewers' saved view) comes from the graph's annotations: each supernode as ``[name,
*member ids]`` with only its exported members, and ``pinnedIds`` its members, the annotation's pins and,
when anything is pinned, the top logit (the viewers draw only pinned nodes in their subgraph). A graph
without annotations gets empty lists. :func:`import_json` reads them back into annotations (the supernodes as the
user's, ``pinnedIds`` as pins).

clew's additions all live inside ``metadata.info``: ``generator``, ``create_time_ms``, ``content_hash``,
``n_layers``, ``model``, ``dictionary`` and ``scores`` (replacement and completeness of the whole graph
and of the pruned one, from the analysis).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import torch

from clew.attribution.analysis import Analysis
from clew.attribution.graph import Graph
from clew.attribution.head_graph import HeadGraph, routed_view
from clew.attribution.prune import Pruned
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


# --- small pieces ---------------------------------------------------------------------------------------


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


SCAN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


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


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``generation_settings`` without unset fields (the upload schema wants integers, never null)."""
    return {k: v for k, v in _jsonable(settings).items() if v is not None}


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


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# --- writing ---------------------------------------------------------------------------------------------


def _nodes(graph: Graph, pruned: Pruned, ids: dict[int, str], labels: dict[int, str]) -> list[dict]:
    kept = torch.nonzero(pruned.node_mask).squeeze(1).tolist()
    top = top_logit(graph)
    out = []
    for node in kept:
        kind = graph.kind(node)
        layer, pos = graph.layer_pos(node)
        rec: dict[str, Any] = {"node_id": ids[node]}
        influence, activation, prob, clerp = 0.0, None, 0.0, labels.get(node, "")
        if kind == "feature":
            index = int(graph.features[node, 2])
            rec |= {"feature": cantor(layer, index), "layer": str(layer)}
            influence = round6(float(pruned.cumulative[node]))
            activation = round6(float(graph.activations[node]))
        elif kind == "error":
            rec |= {"feature": -1, "layer": str(layer)}
            influence = round6(float(pruned.cumulative[node]))
            if graph.error_norms is not None:
                activation = round6(float(graph.error_norms[layer, pos]))
        elif kind == "embedding":
            rec |= {"feature": int(graph.tokens[pos]), "layer": "E"}
            influence = round6(float(pruned.cumulative[node]))
        else:
            j = node - graph.logit_offset
            prob = float(graph.logit_probs[j])
            rec |= {"feature": int(graph.logit_tokens[j]), "layer": str(graph.n_layers + 1)}
            clerp = f'Output "{labels.get(node, graph.logit_labels[j])}" (p={prob:.3f})'
        rec |= {
            "ctx_idx": pos,
            "feature_type": FEATURE_TYPE[kind],
            "jsNodeId": ids[node],
            "clerp": clerp,
            "influence": influence,
            "activation": activation,
            "token_prob": round6(prob),
            "is_target_logit": kind == "logit" and node - graph.logit_offset == top,
        }
        out.append(rec)
    return out


def _links(graph: Graph, pruned: Pruned, ids: dict[int, str]) -> list[str]:
    """Each kept edge as a compact JSON object, source -> target, with its raw weight."""
    rows, cols = torch.nonzero(pruned.edge_mask, as_tuple=True)
    targets = graph.row_nodes()[rows].tolist()
    weights = graph.adjacency[rows, cols].float().tolist()
    out = []
    for t, s, w in zip(targets, cols.tolist(), weights):
        if s in ids and t in ids and round6(w) is not None:
            out.append(f'{{"source":"{ids[s]}","target":"{ids[t]}","weight":{round6(w)!r}}}')
    return out


def _head_clerp(hg: HeadGraph, i: int) -> str:
    """``head L2.H4@26 <- @10 ' Wen' 0.94; QK: L0/F606@26 x head L1.H0@10 +3.1``."""
    g = hg.graph
    text = hg.head_key(i)
    keys = [(p, w) for p, w in hg.top_keys(i, 4) if p != int(hg.heads[i, 2])][:2]
    if keys:
        text += " <- " + ", ".join(f"@{p} {g.token_strings[p]!r} {w:.2f}" for p, w in keys)
    why = hg.qk.get(hg.head_key(i))
    if why and why.get("pairs"):
        q, k, v = why["pairs"][0]
        text += f"; QK @{why['key']}: {q} x {k} {v:+.3g}"  # the top pair of pieces that are no constants
    return text


def _routed(
    hg: HeadGraph, pruned: Pruned, ids: dict[int, str], share: float, labels: dict[int, str]
) -> tuple[list[dict], list[str], list[str]]:
    """The shown head nodes, every link (kept edges, those across positions routed through heads) and
    the head nodes' ids."""
    graph = hg.graph
    view = routed_view(hg, pruned.edge_mask, share)
    row_nodes = graph.row_nodes()
    nodes, head_ids, links = [], [], []
    for n, i in enumerate(view.heads.tolist()):
        layer, head, pos = (int(v) for v in hg.heads[i])
        nid = f"A{layer}_{head}_{pos}"
        targets = view.out[n].nonzero().squeeze(1)
        # shown whenever one of the targets it feeds is shown (logits always are)
        inf = min([float(pruned.cumulative[int(row_nodes[r])]) for r in targets.tolist()] or [0.0])
        nodes.append(
            {
                "node_id": nid,
                "feature": -2 - i,
                "layer": str(layer),
                "ctx_idx": pos,
                "feature_type": HEAD_FEATURE_TYPE,
                "jsNodeId": nid,
                "clerp": labels.get(hg.head_offset + i) or _head_clerp(hg, i),
                "influence": round6(inf),
                "activation": round6(float(view.out[n].sum())),
                "token_prob": 0.0,
                "is_target_logit": False,
            }
        )
        head_ids.append(nid)
        for s in view.into[n].nonzero().squeeze(1).tolist():
            links.append(_link(ids[s], nid, float(view.into[n, s])))
        for r in targets.tolist():
            links.append(_link(nid, ids[int(row_nodes[r])], float(view.out[n, r])))
    rows, cols = torch.nonzero(view.direct_mask, as_tuple=True)
    for t, s, w in zip(row_nodes[rows].tolist(), cols.tolist(), view.direct[rows, cols].tolist()):
        if s in ids and t in ids:
            links.append(_link(ids[s], ids[t], w))
    return nodes, [x for x in links if x], head_ids


def _q_params(graph: Graph, ids: dict[int, str]) -> dict[str, Any]:
    """The viewers' saved view from ``graph.annotations``: each supernode as ``[name, *member ids]`` (its
    members that are exported; none, no supernode), and pinned, so that the viewers' subgraph draws
    them: the members, the annotation's ``pins`` and, when anything is pinned, the top logit. Keys that
    name no exported node are left out; an annotation of the wrong shape is left out whole."""
    index = graph.node_index()

    def shown(keys: Any) -> list[str]:
        if not isinstance(keys, list):
            return []
        return [ids[index[k]] for k in keys if isinstance(k, str) and index.get(k) in ids]

    groups = graph.annotations.get("supernodes")
    supernodes, pinned = [], []
    for group in groups if isinstance(groups, list) else []:
        members = shown(group.get("members")) if isinstance(group, dict) else []
        if members:
            name = group.get("name")
            supernodes.append([name if isinstance(name, str) and name else "supernode", *members])
            pinned += members
    pinned += shown(graph.annotations.get("pins"))
    top = graph.logit_offset + top_logit(graph)
    if pinned and graph.n_logits and top in ids:
        pinned.append(ids[top])
    return {
        "pinnedIds": list(dict.fromkeys(pinned)),
        "supernodes": supernodes,
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }


def _link(source: str, target: str, weight: float) -> str:
    w = round6(weight)
    return "" if w is None else f'{{"source":"{source}","target":"{target}","weight":{w!r}}}'


def _heads_info(hg: HeadGraph, head_ids: list[str], share: float) -> dict[str, Any]:
    return {
        "node_ids": head_ids,
        "feature_type": HEAD_FEATURE_TYPE,
        "head_share": share,
        "tolerance": hg.tolerance,
        "about": "head node 'A{layer}_{head}_{pos}': what head h of that layer moved into position pos; "
        "links into it and out of it are sums of exact routes (clew.attribution.head_graph)",
    }


def export_json(
    graph: Graph,
    analysis: Analysis,
    out_dir: str | Path,
    slug: str | None = None,
    *,
    model_id: str | None = None,
    transcoder_list: list[str] | None = None,
    feature_json_base_url: str | None = None,
    labels: dict[int, str] | None = None,
    heads: HeadGraph | None = None,
    head_share: float = 0.1,
) -> Path:
    """Write ``analysis``'s pruned view of ``graph`` to ``out_dir/<slug>.json`` for the viewers; update
    ``graph-metadata.json``.

    With ``heads`` (a :class:`~clew.attribution.head_graph.HeadGraph` of this graph), each kept edge
    across positions is drawn through the head nodes that carry at least ``head_share`` of it
    (:func:`~clew.attribution.head_graph.routed_view`; see the module docstring for how heads appear).

    ``labels`` maps node indices to display labels (``clerp``); ``model_id`` is the viewers' ``scan``
    (default: :func:`scan_from` the graph's model name). Returns the path of the graph file.
    """
    from clew import __version__

    out_dir = Path(out_dir)
    prompt = graph.prompt or "".join(graph.token_strings)
    slug = slug_from(prompt) if slug is None else check_slug(slug)
    if out_dir.exists() and not out_dir.is_dir():
        raise ClewError(f"{out_dir}: not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    pruned, node_threshold = analysis.pruned, analysis.node_threshold
    ids = {n: i for n, i in node_ids(graph).items() if pruned.node_mask[n]}
    nodes = [
        json.dumps(n, ensure_ascii=False, separators=(",", ":"))
        for n in _nodes(graph, pruned, ids, labels or {})
    ]
    links = _links(graph, pruned, ids)
    head_ids: list[str] = []
    if heads is not None:
        if heads.graph is not graph:
            raise ClewError("the head graph routes another graph than the one exported")
        head_nodes, links, head_ids = _routed(heads, pruned, ids, head_share, labels or {})
        nodes += [json.dumps(n, ensure_ascii=False, separators=(",", ":")) for n in head_nodes]
    body = '"nodes":[\n' + ",\n".join(nodes) + '\n],\n"links":[\n' + ",\n".join(links) + "\n]"
    content_hash = hashlib.sha256(body.encode("utf-8")).hexdigest()[:12]

    whole, sub = analysis.scores, analysis.pruned_scores
    scan = model_id or scan_from(graph.model_name)
    created = int(time.time() * 1000)
    metadata: dict[str, Any] = {
        "slug": slug,
        "scan": scan,
        "prompt": prompt,
        "prompt_tokens": list(graph.token_strings),
        "node_threshold": node_threshold,
        "schema_version": SCHEMA_VERSION,
        "transcoder_list": list(transcoder_list or []),
    }
    if feature_json_base_url:
        metadata["feature_details"] = {"feature_json_base_url": feature_json_base_url}
    metadata["info"] = {
        "description": f"attribution graph of {len(graph.token_strings)} tokens by clew",
        "generator": {"name": "clew", "version": __version__},
        "create_time_ms": created,
        "content_hash": content_hash,
        "n_layers": graph.n_layers,
        "model": public_name(graph.model_name),
        "dictionary": public_name(graph.dictionary_name),
        **({"heads": _heads_info(heads, head_ids, head_share)} if heads is not None else {}),
        "scores": {
            "replacement": round6(whole.replacement),
            "completeness": round6(whole.completeness),
            "pruned_replacement": round6(sub.replacement),
            "pruned_completeness": round6(sub.completeness),
        },
    }
    metadata["generation_settings"] = _settings(graph.settings)
    metadata["pruning_settings"] = {
        "node_threshold": node_threshold,
        "edge_threshold": analysis.edge_threshold,
    }
    q_params = _q_params(graph, ids)

    head = (
        '{"metadata":'
        + json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
        + ',\n"qParams":'
        + json.dumps(q_params, separators=(",", ":"))
        + ",\n"
    )
    path = out_dir / f"{slug}.json"
    write_atomic(path, head + body + "}\n")
    entry = {k: metadata[k] for k in ("slug", "scan", "prompt", "prompt_tokens", "node_threshold")}
    entry |= {"schema_version": SCHEMA_VERSION, "content_hash": content_hash, "create_time_ms": created}
    _update_index(out_dir / INDEX_FILE, entry)
    return path


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


def _update_index(path: Path, entry: dict[str, Any]) -> None:
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


# --- reading ---------------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    """An int from an int or an integer string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _feature_index(node: dict, layer: int, pos: int) -> int:
    """The dictionary index of a feature node: from ``"{layer}_{index}_{pos}"`` when the id has that
    form and agrees with the fields, else by undoing the Cantor pairing of ``feature``, else ``feature``."""
    m = re.fullmatch(r"(-?\d+)_(\d+)_(-?\d+)", node["node_id"])
    if m and int(m[1]) == layer and int(m[3]) == pos:
        return int(m[2])
    feature = _int(node.get("feature"))
    if feature is None:
        raise ClewError("field 'feature' is missing or not an integer")
    if feature >= 0 and uncantor(feature)[0] == layer:
        return uncantor(feature)[1]
    return feature


def _logit_label(clerp: str, token: int) -> str:
    m = re.match(r'^Output "(.*)" \(p=', clerp, re.S)
    if m:
        return m[1]
    return clerp.split("(p=")[0].strip() or str(token)


def _logit_prob(node: dict) -> float:
    prob = _number(node.get("token_prob"))
    if prob is None or (prob == 0.0 and "(p=" in str(node.get("clerp") or "")):
        m = re.search(r"\(p=([-+0-9.eE]+)\)", str(node.get("clerp") or ""))
        prob = float(m[1]) if m else 0.0
    return prob


def import_json(path: str | Path) -> Graph:
    """Read a viewer graph JSON (clew's, circuit-tracer's or Neuronpedia's) into a :class:`Graph`; see
    :func:`_import_json`. Whatever a damaged or hostile file holds, the answer is the graph or a one-line
    :class:`ClewError` naming the file."""
    try:
        return _import_json(path)
    except ClewError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError, RuntimeError) as err:
        first = " ".join(str(err).split())[:120]
        raise ClewError(
            f"{path}: a field holds a value of the wrong kind ({type(err).__name__}: {first})"
        ) from None


def _import_json(path: str | Path) -> Graph:
    """Read a viewer graph JSON (clew's, circuit-tracer's or Neuronpedia's) into a :class:`Graph`.

    The adjacency holds the file's links (rows the features then the logits, as in every graph); edges
    the file does not have are zero, and every (layer, position) gets an error node whether or not
    the file lists it. ``settings`` keep the file's generation settings and, under ``imported``, where
    the graph came from.
    """
    path = Path(path)
    if not path.is_file():
        raise ClewError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClewError(f"{path}: not a JSON file ({err})") from None
    except RecursionError:
        raise ClewError(f"{path}: not a graph file (its JSON is nested too deeply)") from None
    if not isinstance(data, dict):
        raise ClewError(f"{path}: the top level is not an object")
    for key, kind in (("metadata", dict), ("nodes", list), ("links", list)):
        if not isinstance(data.get(key), kind):
            raise ClewError(
                f"{path}: field '{key}' is missing or not a{'n object' if kind is dict else ' list'}"
            )
    meta = data["metadata"]
    tokens_text = meta.get("prompt_tokens")
    if not isinstance(tokens_text, list) or not all(isinstance(t, str) for t in tokens_text):
        raise ClewError(f"{path}: field 'metadata.prompt_tokens' is missing or not a list of strings")
    P = len(tokens_text)
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    heads = info.get("heads") if isinstance(info.get("heads"), dict) else {}
    head_ids = set(heads.get("node_ids") or []) if isinstance(heads.get("node_ids"), list) else set()
    if head_ids:  # a view with head nodes: the graph without them (edges through heads are not restored)
        data = dict(data)
        data["nodes"] = [
            n for n in data["nodes"] if not (isinstance(n, dict) and n.get("node_id") in head_ids)
        ]
        data["links"] = [
            x
            for x in data["links"]
            if not (isinstance(x, dict) and (x.get("source") in head_ids or x.get("target") in head_ids))
        ]

    parsed = []  # (position in file, kind, layer, pos, extra, node)
    for i, node in enumerate(data["nodes"]):
        where = f"{path}: nodes[{i}]"
        if not isinstance(node, dict) or not isinstance(node.get("node_id"), str):
            raise ClewError(f"{where}: field 'node_id' is missing or not a string")
        kind = KIND_OF_TYPE.get(node.get("feature_type"))  # type: ignore[arg-type]
        if kind is None:
            raise ClewError(
                f"{where}: field 'feature_type' is {node.get('feature_type')!r}, not one clew reads"
            )
        pos = _int(node.get("ctx_idx"))
        if pos is None or not 0 <= pos < P:
            raise ClewError(f"{where}: field 'ctx_idx' is {node.get('ctx_idx')!r}, not a position below {P}")
        layer = _int(node.get("layer"))
        if kind in ("feature", "error") and (layer is None or layer < 0):
            raise ClewError(f"{where}: field 'layer' is {node.get('layer')!r}, not a layer number")
        extra: Any = None
        if kind == "feature":
            try:
                extra = _feature_index(node, layer, pos)  # type: ignore[arg-type]
            except ClewError as err:
                raise ClewError(f"{where}: {err}") from None
        elif kind == "embedding":
            m = re.fullmatch(r"E_(-?\d+)_(\d+)", node["node_id"])
            extra = int(m[1]) if m else -1
        elif kind == "logit":
            token = _int(node.get("feature"))
            extra = -1 if token is None else token
        parsed.append((i, kind, layer, pos, extra, node))

    ids = [p[5]["node_id"] for p in parsed]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ClewError(f"{path}: field 'node_id' {dup!r} appears on more than one node")

    layers = [p[2] for p in parsed if p[1] in ("feature", "error")]
    logit_layers = [p[2] - 1 for p in parsed if p[1] == "logit" and p[2] is not None]
    L = _int(info.get("n_layers"))
    if L is None:
        L = max([x + 1 for x in layers] + logit_layers + [0])
    if layers and max(layers) >= L:
        raise ClewError(f"{path}: field 'metadata.info.n_layers' is {L}, but a node has layer {max(layers)}")
    if not 1 <= L <= 4096:
        raise ClewError(f"{path}: field 'metadata.info.n_layers' is {L}; expected 1..4096")

    features = sorted((p for p in parsed if p[1] == "feature"), key=lambda p: (p[2], p[3], p[4]))
    logits = [p for p in parsed if p[1] == "logit"]
    Nf, T = len(features), len(logits)
    keys = [(p[2], p[3], p[4]) for p in features]
    if len(set(keys)) != len(keys):
        raise ClewError(
            f"{path}: nodes: the feature {next(k for k in keys if keys.count(k) > 1)} appears twice"
        )
    embed_offset = Nf + L * P
    logit_offset = embed_offset + P
    if (Nf + T) * (logit_offset + T) > 2**31:  # the adjacency would need more than 8 GB
        raise ClewError(
            f"{path}: {Nf} features, {L} layers and {P} tokens make an adjacency too large to hold"
        )
    index: dict[str, int] = {}
    tokens = torch.full((P,), -1, dtype=torch.long)
    error_norms = torch.zeros(L, P)
    has_norms = False
    for n, p in enumerate(features):
        index[p[5]["node_id"]] = n
    for _, kind, layer, pos, extra, node in parsed:
        if kind == "error":
            index[node["node_id"]] = Nf + layer * P + pos
            act = _number(node.get("activation"))
            if act is not None:
                error_norms[layer, pos], has_norms = act, True
        elif kind == "embedding":
            index[node["node_id"]] = embed_offset + pos
            tokens[pos] = extra
    for j, p in enumerate(logits):
        index[p[5]["node_id"]] = logit_offset + j
    if len(set(index.values())) != len(index):
        raise ClewError(f"{path}: nodes: two nodes share the same kind, layer and position")

    row_of = {n: n for n in range(Nf)} | {logit_offset + j: Nf + j for j in range(T)}
    rows, cols, weights = [], [], []
    for i, link in enumerate(data["links"]):
        if not isinstance(link, dict):
            raise ClewError(f"{path}: links[{i}] is not an object")
        for end in ("source", "target"):
            if link.get(end) not in index:
                raise ClewError(f"{path}: links[{i}].{end} {link.get(end)!r} is not the node_id of a node")
        weight = _number(link.get("weight"))
        if weight is None:
            raise ClewError(f"{path}: links[{i}].weight is {link.get('weight')!r}, not a number")
        target = index[link["target"]]
        if target not in row_of:
            raise ClewError(f"{path}: links[{i}].target {link['target']!r} is not a feature or logit node")
        rows.append(row_of[target])
        cols.append(index[link["source"]])
        weights.append(weight)
    adjacency = torch.zeros(Nf + T, logit_offset + T)
    if rows:
        adjacency[torch.tensor(rows), torch.tensor(cols)] = torch.tensor(weights)

    settings = dict(meta.get("generation_settings") or {})
    settings["imported"] = {
        "path": str(path),
        "slug": meta.get("slug"),
        "generator": info.get("generator"),
        "pruning_settings": meta.get("pruning_settings"),
        "node_threshold": meta.get("node_threshold"),
        "schema_version": meta.get("schema_version"),
    }
    if head_ids:
        settings["imported"]["head_nodes_dropped"] = len(head_ids)
    transcoders = meta.get("transcoder_list") if isinstance(meta.get("transcoder_list"), list) else []
    graph = Graph(
        prompt=meta.get("prompt") if isinstance(meta.get("prompt"), str) else "".join(tokens_text),
        tokens=tokens,
        token_strings=list(tokens_text),
        n_layers=L,
        features=torch.tensor([list(k) for k in keys], dtype=torch.long).reshape(Nf, 3),
        activations=torch.tensor([_number(p[5].get("activation")) or 0.0 for p in features]),
        logit_tokens=torch.tensor([p[4] for p in logits], dtype=torch.long),
        logit_probs=torch.tensor([_logit_prob(p[5]) for p in logits]),
        logit_labels=[_logit_label(str(p[5].get("clerp") or ""), p[4]) for p in logits],
        adjacency=adjacency,
        model_name=str(meta.get("scan") or ""),
        dictionary_name=str(info.get("dictionary") or info.get("transcoder_set") or "-".join(transcoders)),
        settings=settings,
        error_norms=error_norms if has_norms else None,
    )
    graph.annotations = _saved_view(data.get("qParams"), index, graph)
    return graph


def _saved_view(q_params: Any, index: dict[str, int], graph: Graph) -> dict[str, Any]:
    """A file's ``qParams`` as annotations: its supernodes (``source`` ``user``) and its ``pinnedIds`` as
    pins, by node key; ids of no node, empty or unnamed groups and values of the wrong shape are left out."""
    if not isinstance(q_params, dict):
        return {}

    def keys(ids: Any) -> list[str]:
        found = [graph.node_key(index[i]) for i in ids if isinstance(i, str) and i in index]
        return list(dict.fromkeys(found))

    out: dict[str, Any] = {}
    groups = q_params.get("supernodes") if isinstance(q_params.get("supernodes"), list) else []
    supernodes = []
    for group in groups:
        if isinstance(group, list) and group and isinstance(group[0], str) and group[0].strip():
            members = keys(group[1:])
            if members:
                supernodes.append({"name": group[0].strip(), "members": members, "why": "", "source": "user"})
    if supernodes:
        out["supernodes"] = supernodes
    pins = keys(q_params["pinnedIds"]) if isinstance(q_params.get("pinnedIds"), list) else []
    if pins:
        out["pins"] = pins
    return out

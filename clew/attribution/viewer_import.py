"""Reading a viewer graph JSON (clew's, circuit-tracer's or Neuronpedia's) back into a :class:`Graph`.

:func:`import_json` takes any file in the attribution-graph viewers' schema (version 1, top-level
``metadata``, ``qParams``, ``nodes``, ``links``; see :mod:`clew.attribution.export` for what clew writes)
and answers the graph or a one-line :class:`ClewError` naming the file, whatever the file holds.

A node's kind comes from its ``feature_type`` only (:data:`~clew.attribution.viewer_schema.KIND_OF_TYPE`),
never from the shape of its id; the ids are those of :mod:`clew.attribution.viewer_schema`, the older
error id ``"0_{layer}_{pos}"`` included. Head nodes (those ``metadata.info.heads.node_ids`` lists) are
dropped with their links, and the rest is read. ``qParams`` (the viewers' saved view) becomes the
graph's annotations: its supernodes as the user's, ``pinnedIds`` as pins.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from clew.attribution.graph import Graph
from clew.attribution.viewer_schema import KIND_OF_TYPE, uncantor
from clew.errors import ClewError


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

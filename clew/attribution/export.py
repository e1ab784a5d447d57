"""Writing graph JSON for the attribution-graph viewers (Neuronpedia's and circuit-tracer's).

:func:`export_json` writes a graph's pruned view (an :class:`~clew.attribution.analysis.Analysis`) to
``<slug>.json`` in the viewers' schema (version 1, top-level ``metadata``, ``qParams``, ``nodes``,
``links``), then adds or replaces the slug's entry in ``graph-metadata.json`` in the same folder. Node
ids, slugs, scans and the index are those of :mod:`clew.attribution.viewer_schema`;
:func:`~clew.attribution.viewer_import.import_json` reads such a file back.

Head nodes (``export_json(..., heads=...)``, a :class:`~clew.attribution.head_graph.HeadGraph`): id
``"A{layer}_{head}_{pos}"``, ``feature_type`` ``"lorsa"`` (the viewers' attention-node type; it is no
error type, so the viewers keep the ``clerp``, and a unique negative ``feature``, ``-2 - i``, keeps
circuit-tracer's viewer from merging or hiding the same head at several positions), ``layer`` the
head's layer, ``ctx_idx`` the query position, ``clerp`` like ``head L2.H4@26 <- @10 ' Wen' 0.94``,
``activation`` the sum of its outgoing links, ``influence`` the smallest cumulative influence of the
targets it feeds. ``metadata.info.heads.node_ids`` lists them; the reader drops them (and their links)
and reads the rest.

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
without annotations gets empty lists; the reader turns them back into annotations.

clew's additions all live inside ``metadata.info``: ``generator``, ``create_time_ms``, ``content_hash``,
``n_layers``, ``model``, ``dictionary`` and ``scores`` (replacement and completeness of the whole graph
and of the pruned one, from the analysis).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from clew.attribution.analysis import Analysis
from clew.attribution.graph import Graph
from clew.attribution.head_graph import HeadGraph, routed_view
from clew.attribution.prune import Pruned
from clew.attribution.viewer_schema import (
    FEATURE_TYPE,
    HEAD_FEATURE_TYPE,
    INDEX_FILE,
    SCHEMA_VERSION,
    cantor,
    check_slug,
    node_ids,
    public_name,
    round6,
    scan_from,
    slug_from,
    top_logit,
    update_index,
)
from clew.errors import ClewError
from clew.files import write_atomic


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``generation_settings`` without unset fields (the upload schema wants integers, never null)."""
    return {k: v for k, v in _jsonable(settings).items() if v is not None}


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
    update_index(out_dir / INDEX_FILE, entry)
    return path

"""The explorer's web application (Starlette): the page, its static files and its JSON API.

Reading (GET):

- ``/``: the page, with this server's token in it; ``/static/...``: its scripts and styles.
- ``/api/graphs``: the graph files of the folder.
- ``/api/view?graph=NAME&threshold=T&edge_threshold=E&extra=KEY,KEY``: the pruned view.
- ``/api/node?graph=NAME&key=KEY``: one node's strongest inputs and outputs from the full adjacency, and
  its feature card (label, logit effects, top examples, histogram) when a feature store is known.

Writing or computing (POST, JSON body with ``graph``):

- ``/api/subgraph`` (``pins``, ``supernodes``): the subgraph's scores and its edges between groups;
- ``/api/intervene`` (``nodes``, ``op``, ``value``): an intervention's new top tokens, predicted and measured;
  with ``op: "swap"`` and ``other`` (another graph of the folder), the swap's (``experiment.run_swap``);
- ``/api/state`` (``state``): the annotations saved into the graph file.

Safety: every request must name this machine in its ``Host`` (no DNS rebinding); every POST must carry
the server's token in ``X-Clew-Token`` and come from the server's own origin (``Origin``, and
``Sec-Fetch-Site`` where the browser sends it), so another page in the same browser cannot write
through the server. The page's Content-Security-Policy allows nothing but this server.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clew.attribution import Graph
from clew.errors import ClewError
from clew.explorer.experiment import run_experiment, run_swap
from clew.explorer.features import Stores, feature_card
from clew.explorer.library import Library
from clew.explorer.state import check_state
from clew.explorer.view import Views, check_threshold, graph_view, node_detail, node_labels, subgraph

STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 4 << 20
"""Largest request body accepted (bytes)."""
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self' http://localhost:* http://127.0.0.1:* vscode-webview: https://*.vscode-cdn.net"
)


ModelLoader = Callable[[Graph], tuple[Any, Any]]
"""graph -> (model, dictionary) for the interventions; raises :class:`ClewError` when it cannot."""
StoreFinder = Callable[[Graph], "str | Path | None"]
"""graph -> the path of its feature store (checked against the graph's dictionary), or None."""


class Explorer:
    """What one server knows: the folder's graphs, how to load a graph's model and feature store, its token."""

    def __init__(
        self,
        root: str | Path,
        load_model: ModelLoader | None = None,
        find_store: StoreFinder | None = None,
        hosts: tuple[str, ...] = LOCAL_HOSTS,
        token: str | None = None,
    ):
        self.library = Library(root)
        self.views = Views()
        self.load_model = load_model
        self.find_store = find_store
        self.hosts = tuple(h.strip("[]").lower() for h in hosts)
        self.token = token or secrets.token_urlsafe(32)
        self.stores = Stores()
        self._bytes: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._labels: dict[int, tuple[Any, dict[int, str]]] = {}

    # --- guards -----------------------------------------------------------------------------------------

    def _host_ok(self, netloc: str) -> bool:
        host = urlsplit(f"//{netloc}").hostname
        return host is not None and host.lower() in self.hosts

    def guard(self, request: Request, write: bool) -> None:
        """Refuse a request for another host, and a write without the token or from another origin."""
        if not self._host_ok(request.headers.get("host", "")):
            raise HTTPException(403, "refused: the Host header does not name this server")
        if not write:
            return
        given = request.headers.get("x-clew-token", "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(403, "refused: missing or wrong X-Clew-Token")
        origin = request.headers.get("origin")
        if origin is None:
            raise HTTPException(403, "refused: a write needs an Origin header")
        parts = urlsplit(origin)
        if parts.scheme != "http" or parts.netloc != request.headers.get("host"):
            raise HTTPException(403, f"refused: origin {origin!r} is not this server")
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise HTTPException(403, f"refused: a {site} request")

    def store(self, graph: Graph):
        path = self.find_store(graph) if self.find_store is not None else None
        return self.stores.get(path) if path is not None else None

    def labels(self, graph: Graph) -> dict[int, str]:
        hit = self._labels.get(id(graph.adjacency))  # the same graph, whatever its annotations
        if hit is not None and hit[0] is graph.adjacency:
            return node_labels(graph, hit[1])
        store = self.store(graph)
        found = {}
        if store is not None:
            for n in range(graph.n_features):
                layer, index = int(graph.features[n, 0]), int(graph.features[n, 2])
                try:
                    label = store.label(layer, index)
                except ClewError:
                    continue
                if label:
                    found[n] = label
        if len(self._labels) > 8:
            self._labels.clear()
        self._labels[id(graph.adjacency)] = (graph.adjacency, found)
        return node_labels(graph, found)

    # --- work (run in a thread) ------------------------------------------------------------------------

    def view(self, name: str, threshold: float, edge_threshold: float, extra: list[str]) -> dict:
        graph = self.library.load(name)
        prep = self.views.prepared(graph)
        pruned = self.views.pruned(graph, threshold, edge_threshold)
        out = graph_view(graph, pruned, prep, self.labels(graph), extra)
        out.update(
            name=name,
            prompt=graph.prompt,
            tokens=graph.token_strings,
            n_layers=graph.n_layers,
            threshold=threshold,
            edge_threshold=edge_threshold,
            model=graph.model_name,
            annotations=graph.annotations,
            writable=self.library.writable(name),
            can_intervene=self.load_model is not None and bool((graph.tokens >= 0).all()),
            has_features=self.store(graph) is not None,
        )
        return out

    def view_bytes(self, name: str, threshold: float, edge: float, extra: list[str], gzipped: bool) -> bytes:
        """The view as JSON bytes (gzipped when asked), kept for the same graph, thresholds and state."""
        graph = self.library.load(name)
        key = (name, id(graph), json.dumps(graph.annotations, sort_keys=True), threshold, edge, tuple(extra))
        with self._lock:
            hit = self._bytes.get(key)
        if hit is None:
            raw = json.dumps(self.view(name, threshold, edge, extra), separators=(",", ":")).encode()
            hit = {False: raw}
        if gzipped not in hit:
            hit[gzipped] = gzip.compress(hit[False], compresslevel=5)
        with self._lock:
            self._bytes[key] = hit
            self._bytes.move_to_end(key)
            while len(self._bytes) > 8:
                self._bytes.popitem(last=False)
        return hit[gzipped]

    def node(self, name: str, key: str) -> dict:
        graph = self.library.load(name)
        prep = self.views.prepared(graph)
        out = node_detail(graph, prep, self.labels(graph), key)
        store = self.store(graph)
        if store is not None and out["kind"] == "feature":
            out["card"] = feature_card(store, out["layer"], out["feature"])
        return out

    def subgraph(self, name: str, pins: Any, supernodes: Any) -> dict:
        graph = self.library.load(name)
        prep = self.views.prepared(graph)
        checked = check_state({"pins": pins, "supernodes": supernodes}, set(prep.index))
        return subgraph(graph, prep, checked["pins"], checked["supernodes"])

    def intervene(self, name: str, nodes: Any, op: Any, value: Any, other: Any = None) -> dict:
        if self.load_model is None:
            raise ClewError("this server has no model to run: start it with clew serve")
        graph = self.library.load(name)
        if not isinstance(nodes, list) or not all(isinstance(k, str) for k in nodes) or len(nodes) > 1000:
            raise ClewError("intervention: 'nodes' is not a list of node keys")
        if op == "swap":
            if not isinstance(other, str) or not other.endswith(".safetensors"):
                raise ClewError("swap: 'other' is not one of the folder's .safetensors graphs")
            if other == name:
                raise ClewError("swap: 'other' is this graph; choose another prompt's graph")
            return run_swap(graph, nodes, self.library.load(other), other, self.load_model)
        return run_experiment(graph, nodes, op, value, self.load_model)

    def save(self, name: str, state: Any) -> dict:
        graph = self.library.load(name)
        checked = check_state(state, set(self.views.prepared(graph).index))
        if not self.library.writable(name):
            self.library.save(name, graph)  # the one-line refusal for a read-only graph
        changed = dataclasses.replace(graph, annotations={**graph.annotations, **checked})
        self.library.save(name, changed)  # the cached graph changes only once the file has
        return {"saved": name, "annotations": changed.annotations}


def _query(request: Request, name: str, default: str | None = None) -> str:
    value = request.query_params.get(name, default)
    if value is None:
        raise ClewError(f"missing query parameter {name!r}")
    return value


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ClewError(f"request body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ClewError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise ClewError("request body is not a JSON object")
    return body


def build_app(explorer: Explorer) -> Starlette:
    """The Starlette application serving ``explorer``."""
    template = (STATIC / "index.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        explorer.guard(request, write=False)
        html = template.replace("{{TOKEN}}", explorer.token)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def graphs(request: Request) -> Response:
        explorer.guard(request, write=False)
        entries = await run_in_threadpool(explorer.library.entries)
        return _json({"root": str(explorer.library.root), "graphs": [e.as_dict() for e in entries]})

    async def view(request: Request) -> Response:
        explorer.guard(request, write=False)
        name = _query(request, "graph")
        threshold = check_threshold(_query(request, "threshold", "0.8"), "threshold")
        edge = check_threshold(_query(request, "edge_threshold", "0.98"), "edge_threshold")
        extra = [k for k in _query(request, "extra", "").split(",") if k][:10_000]
        gzipped = "gzip" in request.headers.get("accept-encoding", "")
        body = await run_in_threadpool(explorer.view_bytes, name, threshold, edge, extra, gzipped)
        headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type="application/json", headers=headers)

    async def node(request: Request) -> Response:
        explorer.guard(request, write=False)
        return _json(await run_in_threadpool(explorer.node, _query(request, "graph"), _query(request, "key")))

    async def post_subgraph(request: Request) -> Response:
        explorer.guard(request, write=True)
        b = await _body(request)
        return _json(
            await run_in_threadpool(
                explorer.subgraph, b.get("graph"), b.get("pins", []), b.get("supernodes", [])
            )
        )

    async def post_intervene(request: Request) -> Response:
        explorer.guard(request, write=True)
        b = await _body(request)
        args = (b.get("graph"), b.get("nodes"), b.get("op", "zero"), b.get("value", 0.0), b.get("other"))
        return _json(await run_in_threadpool(explorer.intervene, *args))

    async def post_state(request: Request) -> Response:
        explorer.guard(request, write=True)
        b = await _body(request)
        return _json(await run_in_threadpool(explorer.save, b.get("graph"), b.get("state")))

    async def clew_error(request: Request, exc: Exception) -> Response:
        return _json({"error": str(exc)}, status=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"error": exc.detail}, status=exc.status_code)

    class GuardedStatic(StaticFiles):
        async def get_response(self, path: str, scope) -> Response:
            explorer.guard(Request(scope), write=False)
            return await super().get_response(path, scope)

    routes = [
        Route("/", page),
        Route("/api/graphs", graphs),
        Route("/api/view", view),
        Route("/api/node", node),
        Route("/api/subgraph", post_subgraph, methods=["POST"]),
        Route("/api/intervene", post_intervene, methods=["POST"]),
        Route("/api/state", post_state, methods=["POST"]),
        Mount("/static", GuardedStatic(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)],
        exception_handlers={ClewError: clew_error, HTTPException: http_error},
    )


def _json(obj: Any, status: int = 200) -> Response:
    return JSONResponse(obj, status_code=status, headers={"Cache-Control": "no-store"})

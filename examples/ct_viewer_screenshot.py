"""clew's Dallas graph and a feature panel in circuit-tracer 0.5.0's own local page, offline, as a PNG.

    python examples/ct_viewer_screenshot.py LIB [--graphs DIR] [--out docs/img/ct-viewer-dallas.png]

circuit-tracer 0.5.0's ``frontend/assets/index.html`` loads six scripts from the internet. LIB is a
folder holding local copies of them, gathered once (none of them is part of clew):

    mkdir -p bench/.work/ctlib && cd bench/.work/ctlib
    : > hotserver-client-ws.js            # the paper's hot-reload client: only reloads on file changes
    npm pack d3@7.9.0 dagre@0.8.5 pako@2.1.0
    for t in *.tgz; do tar xzf $t; cp package/dist/{d3.min.js,dagre.min.js,pako.min.js} . 2>/dev/null;
        rm -rf package; done; mv d3.min.js d3.js
    git clone https://github.com/neverix/attribution-graphs-frontend ag && \\
        git -C ag show 7755ec67:lib/jetpack_2024-07-20.js > jetpack_2024-07-20.js && \\
        git -C ag show 7755ec67:lib/npy_v0.js > npy_v0.js && rm -rf ag

The paper's customised d3-jetpack and npy loader come from a fork of Anthropic's
attribution-graphs-frontend that vendored them (commit 7755ec67, "Remove dependencies"; its jetpack
carries one comment line of the fork's own). The paper's ``d3.js`` is d3 version 7 (the jetpack calls
``d3.groups``, ``d3.creator``); npm's d3 7.9.0 stands in for it. :data:`SCRIPTS` holds each file's
SHA-256; a file that differs is refused unless ``--any-version``.

The script copies circuit-tracer's assets (found through ``--ct-python``, a Python with circuit-tracer
0.5.0 installed) to a temporary folder with the six URLs pointed at ``./lib/``, serves it and the graph
folder with circuit-tracer's own request handler (``local_server.CircuitGraphHandler``, bound to
127.0.0.1), opens the Dallas graph in Chromium with every request to another host aborted, clicks a
feature node (the most active one at ' Dallas') and waits for its panel (top and bottom logits,
examples), then saves the page. Without ``--graphs`` it first runs ``clew demo`` (the organism's
shipped feature store gives the ``features/`` files). It fails if the page raised an error, asked for
anything outside 127.0.0.1, or fetched no feature file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

from clew.attribution.viewer_schema import slug_from
from clew.commands.demo import DALLAS
from clew.errors import ClewError

ROOT = Path(__file__).resolve().parents[1]
PAPER_LIB = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"


@dataclass(frozen=True)
class Script:
    """One of the page's six outside scripts and the local file that stands in for it."""

    name: str
    """File name in LIB (and under ``lib/`` of the served page)."""
    url: str
    """The URL exactly as circuit-tracer 0.5.0's ``index.html`` writes it."""
    origin: str
    """Where the local copy comes from."""
    sha256: str
    """SHA-256 of the local copy this script was run with."""


SCRIPTS = (
    Script(
        "hotserver-client-ws.js",
        PAPER_LIB + "hotserver-client-ws.js",
        "an empty file (the paper's hot-reload client)",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    Script(
        "d3.js",
        PAPER_LIB + "d3.js",
        "npm d3@7.9.0, package/dist/d3.min.js",
        "f2094bbf6141b359722c4fe454eb6c4b0f0e42cc10cc7af921fc158fceb86539",
    ),
    Script(
        "jetpack_2024-07-20.js",
        PAPER_LIB + "jetpack_2024-07-20.js",
        "github.com/neverix/attribution-graphs-frontend 7755ec67, lib/jetpack_2024-07-20.js",
        "6f2791f07d5cc598e53e3c8068bfb0c0db839fe4c9b102d1c1956dd50ee8f07c",
    ),
    Script(
        "npy_v0.js",
        PAPER_LIB + "npy_v0.js",
        "github.com/neverix/attribution-graphs-frontend 7755ec67, lib/npy_v0.js",
        "39279fa685a30d313ed83dfc622287fa171e6f5961df3b92bdfc99116a4d990b",
    ),
    Script(
        "dagre.min.js",
        "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js",
        "npm dagre@0.8.5, package/dist/dagre.min.js",
        "62eb9787ccfdbdf4148d4d99d31dbf9ee4770eafee81e637d759b52aac22cd51",
    ),
    Script(
        "pako.min.js",
        "https://unpkg.com/pako@2.1.0/dist/pako.min.js",
        "npm pako@2.1.0, package/dist/pako.min.js",
        "ede2693a4a6a5126b9d35669062b358ecab6ae7b9b86a1cf302feb45a8514907",
    ),
)

# Run by --ct-python: circuit-tracer's own handler on 127.0.0.1 (its serve() binds every interface).
SERVER = """
import functools, sys
from circuit_tracer.frontend.local_server import CircuitGraphHandler, ReusableTCPServer
handler = functools.partial(CircuitGraphHandler, frontend_dir=sys.argv[1], data_dir=sys.argv[2])
httpd = ReusableTCPServer(("127.0.0.1", 0), handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""
ASSETS = """
import importlib.metadata, importlib.resources
print(importlib.metadata.version("circuit-tracer"))
print(importlib.resources.files("circuit_tracer") / "frontend/assets")
"""


def check_lib(lib: Path, any_version: bool = False) -> None:
    """Every file of :data:`SCRIPTS` is in ``lib``, and (unless ``any_version``) is the one recorded."""
    if not lib.is_dir():
        raise ClewError(f"{lib}: not a folder (LIB must hold the page's six scripts; see --help)")
    for s in SCRIPTS:
        path = lib / s.name
        if not path.is_file():
            raise ClewError(f"{path}: missing ({s.origin})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != s.sha256 and not any_version:
            raise ClewError(
                f"{path}: SHA-256 {digest[:12]}… is not {s.sha256[:12]}… ({s.origin}); --any-version takes it"
            )


def rewrite_index(html: str) -> str:
    """``index.html`` with each of the six URLs pointed at ``./lib/<name>``; each must be there once."""
    for s in SCRIPTS:
        found = html.count(f"'{s.url}'") + html.count(f'"{s.url}"')
        if found != 1:
            raise ClewError(
                f"index.html: loads {s.url} {found} times, not once (this script knows circuit-tracer 0.5.0's page)"
            )
        html = html.replace(s.url, f"./lib/{s.name}")
    return html


def frontend_copy(ct_python: str, lib: Path, into: Path) -> tuple[str, Path]:
    """circuit-tracer's assets copied to ``into`` with the scripts local; its version and the copy."""
    try:
        out = subprocess.run([ct_python, "-c", ASSETS], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise ClewError(f"--ct-python {ct_python}: cannot import circuit_tracer with it") from None
    version, assets = out.split("\n")[:2]
    frontend = into / "frontend"
    shutil.copytree(assets, frontend)
    index = frontend / "index.html"
    index.write_text(rewrite_index(index.read_text(encoding="utf-8")), encoding="utf-8")
    (frontend / "lib").mkdir()
    for s in SCRIPTS:
        shutil.copyfile(lib / s.name, frontend / "lib" / s.name)
    return version, frontend


def pick_node(graph_json: Path, token: str, node_id: str | None = None) -> dict:
    """Node ``node_id`` of the graph, or else the most active feature node at ``token``."""
    data = json.loads(graph_json.read_text(encoding="utf-8"))
    if node_id is not None:
        found = [n for n in data["nodes"] if n["node_id"] == node_id]
        if not found:
            raise ClewError(f"--node {node_id}: no such node_id in {graph_json.name}")
        return found[0]
    tokens = data["metadata"]["prompt_tokens"]
    if token not in tokens:
        raise ClewError(f"--token {token!r}: not a token of {graph_json.name} ({tokens})")
    at = tokens.index(token)
    features = [
        n for n in data["nodes"] if n["ctx_idx"] == at and n["feature_type"] == "cross layer transcoder"
    ]
    if not features:
        raise ClewError(f"--token {token!r}: {graph_json.name} keeps no feature node there")
    return max(features, key=lambda n: n["activation"])


def supernodes_param(graph_json: Path) -> str:
    """``&supernodes=...`` for the page's URL from the file's ``qParams``: circuit-tracer 0.5.0's
    ``initCg`` replaces ``qParams.supernodes`` by the URL's (an empty list when the URL has none), so
    the file's supernodes reach its subgraph only this way. Encoded twice: the page decodes the value
    once more after ``URLSearchParams`` has."""
    supernodes = json.loads(graph_json.read_text(encoding="utf-8"))["qParams"]["supernodes"]
    if not supernodes:
        return ""
    return "&supernodes=" + quote(quote(json.dumps(supernodes, ensure_ascii=False), safe=""), safe="")


def screenshot(url: str, node_id: str, out: Path, chromium: str) -> dict:
    """Open ``url`` offline, click ``node_id`` in the link graph, wait for its feature panel, save the
    page to ``out``; what happened (requests blocked, page errors, nodes drawn, feature files)."""
    from playwright.sync_api import sync_playwright

    here = urlparse(url).netloc
    seen: dict[str, list] = {"local": [], "blocked": [], "errors": [], "features": []}

    def route(r):
        if urlparse(r.request.url).netloc == here:
            seen["local"].append(r.request.url)
            r.continue_()
        else:
            seen["blocked"].append(r.request.url)
            r.abort()

    def response(r):
        if "/features/" in r.url:
            seen["features"].append((r.url.rsplit("/", 1)[-1], r.status))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.route("**/*", route)
        page.on("response", response)
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.goto(url)
        page.wait_for_selector(".link-graph .node", state="attached", timeout=30_000)
        where = page.evaluate(
            """(id) => {
              const nodes = Array.from(document.querySelectorAll('.link-graph .node'));
              const e = nodes.find(e => e.__data__ && e.__data__.node_id === id);
              if (!e) return null;
              const r = e.getBoundingClientRect();
              return {x: r.x + r.width / 2, y: r.y + r.height / 2, drawn: nodes.length};
            }""",
            node_id,
        )
        if where is None:
            raise ClewError(f"node {node_id}: not drawn by the page")
        page.mouse.click(where["x"], where["y"])
        page.mouse.move(2, 890)  # off the graph: the panel stays on the clicked node, no tooltip
        page.wait_for_selector(".feature-example-list .ctx-container", timeout=20_000)
        page.wait_for_selector(".feature-example-logits span.token", timeout=20_000)
        page.wait_for_timeout(500)
        panel = page.evaluate("document.querySelector('.feature-detail').innerText")
        page.screenshot(path=str(out))
        browser.close()
    seen["drawn"] = where["drawn"]
    seen["panel"] = panel
    return seen


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lib", type=Path, help="folder with the page's six scripts (see above)")
    p.add_argument(
        "--graphs", type=Path, help="a `clew demo` folder (default: run clew demo into a temp folder)"
    )
    p.add_argument("--token", default=" Dallas", help="click the most active feature at this token")
    p.add_argument("--node", help="click this node instead (its node_id in the graph's JSON, e.g. 1_951_7)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/img/ct-viewer-dallas.png", help="the PNG")
    p.add_argument(
        "--ct-python", default=str(ROOT / "bench/.ctvenv/bin/python"), help="Python with circuit-tracer"
    )
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium for Playwright")
    p.add_argument(
        "--any-version", action="store_true", help="take LIB's files even if their SHA-256 differs"
    )
    a = p.parse_args()
    try:
        check_lib(a.lib, a.any_version)
        with tempfile.TemporaryDirectory(prefix="ct-viewer-") as tmp:
            version, frontend = frontend_copy(a.ct_python, a.lib, Path(tmp))
            graphs = a.graphs or Path(tmp) / "graphs"
            if a.graphs is None:
                subprocess.run([sys.executable, "-m", "clew.cli", "demo", "--out", str(graphs)], check=True)
            slug = slug_from(DALLAS)
            if not (graphs / f"{slug}.json").is_file() or not (graphs / "features").is_dir():
                raise ClewError(f"--graphs {graphs}: no {slug}.json with features/ (run clew demo)")
            node = pick_node(graphs / f"{slug}.json", a.token, a.node)
            server = subprocess.Popen(
                [a.ct_python, "-c", SERVER, str(frontend), str(graphs.resolve())],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                port = int(server.stdout.readline())
                a.out.parent.mkdir(parents=True, exist_ok=True)
                url = f"http://127.0.0.1:{port}/index.html?slug={slug}" + supernodes_param(
                    graphs / f"{slug}.json"
                )
                seen = screenshot(url, node["node_id"], a.out, a.chromium)
            finally:
                server.terminate()
                server.wait(timeout=10)
    except ClewError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"circuit-tracer {version}'s page, scripts from {a.lib}; graph {slug} from {graphs}")
    print(f"  nodes drawn: {seen['drawn']}; clicked {node['node_id']} ({node['clerp']!r})")
    print(f"  feature files fetched: {seen['features']}")
    print(f"  requests to 127.0.0.1: {len(seen['local'])}")
    print(f"  requests to other hosts (aborted): {len(seen['blocked'])} {seen['blocked'][:3]}")
    print(f"  page errors: {len(seen['errors'])} {seen['errors'][:3]}")
    print(f"  panel: {' | '.join(seen['panel'].splitlines()[:6])}")
    print(f"wrote {a.out}")
    ok = not seen["blocked"] and not seen["errors"] and any(s == 200 for _, s in seen["features"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

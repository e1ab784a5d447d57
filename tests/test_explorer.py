"""The explorer's server without a browser: its API against clew's own computations, and its safety
(paths confined to the folder, writes only with the token from the server's own origin, bad state
refused with the file untouched, loopback only by default)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket

import pytest
import torch
from explorer_graphs import LA, make_folder

from clew.attribution import Graph, prune, scores
from clew.errors import ClewError
from clew.explorer import Background, Explorer, build_app
from clew.explorer.view import Views

testclient = pytest.importorskip("starlette.testclient")
BASE = "http://127.0.0.1:8765"
ORIGIN = {"Origin": BASE}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    made = make_folder(tmp_path_factory.mktemp("explorer"))
    model, tc = made["model"], made["tc"]
    explorer = Explorer(made["root"], load_model=lambda graph: (model, tc))
    made["explorer"] = explorer
    made["client"] = testclient.TestClient(build_app(explorer), base_url=BASE)
    return made


def _write(made, path, body, token=True, headers=None):
    h = {"X-Clew-Token": made["explorer"].token, **ORIGIN} if token else dict(ORIGIN)
    h.update(headers or {})
    return made["client"].post(path, json=body, headers=h)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the API ------------------------------------------------------------------------------------------------


def test_lists_graphs_and_serves_the_page_with_its_token(made):
    c = made["client"]
    names = [g["name"] for g in c.get("/api/graphs").json()["graphs"]]
    assert names == ["ct.json", "dallas.safetensors", "viewer/dallas.json"]  # not graph-metadata.json
    page = c.get("/")
    assert made["explorer"].token in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "graph.js", "api.js", "subgraph.js", "style.css"):
        text = c.get(f"/static/{asset}").text
        assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere


def test_view_is_clews_pruning(made):
    graph: Graph = made["graph"]
    for threshold, edge in (
        (0.5, 0.98),
        (0.8, 0.98),
        (0.8, 0.9),
        (0.95, 0.995),
    ):  # at exactly 1, float sums decide
        params = {"graph": "dallas.safetensors", "threshold": threshold, "edge_threshold": edge}
        view = made["client"].get("/api/view", params=params).json()
        pruned = prune(graph, threshold, edge)
        keys = [graph.node_key(int(n)) for n in torch.nonzero(pruned.node_mask).squeeze(1)]
        assert view["nodes"]["key"] == keys
        assert view["counts"]["edges"] == int(pruned.edge_mask.sum())
        # an edge sent is the adjacency's entry
        i = 0
        s, t = (
            view["nodes"]["key"][view["edges"]["source"][i]],
            view["nodes"]["key"][view["edges"]["target"][i]],
        )
        index = graph.node_index()
        row = int((graph.row_nodes() == index[t]).nonzero())
        assert view["edges"]["weight"][i] == pytest.approx(float(graph.adjacency[row, index[s]]), rel=1e-3)
    # pinned nodes come along even when pruned away
    hidden = next(graph.node_key(n) for n in range(graph.n_features) if not prune(graph, 0.5).node_mask[n])
    view = made["client"].get(
        "/api/view", params={"graph": "dallas.safetensors", "threshold": 0.5, "extra": hidden}
    )
    assert hidden in view.json()["nodes"]["key"]


def test_node_detail_reads_the_full_adjacency(made):
    graph: Graph = made["graph"]
    detail = made["client"].get("/api/node", params={"graph": "dallas.safetensors", "key": "logit@0"}).json()
    row = graph.adjacency[graph.n_features]
    strongest = int(row.argmax())
    assert detail["inputs"]["positive"][0]["key"] == graph.node_key(strongest)
    assert detail["inputs"]["positive"][0]["weight"] == pytest.approx(float(row[strongest]), rel=1e-3)
    ws = [e["weight"] for e in detail["inputs"]["negative"]]
    assert ws == sorted(ws) and all(w < 0 for w in ws)
    bad = made["client"].get("/api/node", params={"graph": "dallas.safetensors", "key": "L9/F1@99"})
    assert bad.status_code == 400 and "not a node" in bad.json()["error"]


def test_subgraph_scores_and_supernode_edges_are_exact(made):
    graph: Graph = made["graph"]
    pruned = prune(graph, 0.8)
    feats = torch.nonzero(pruned.node_mask[: graph.n_features]).squeeze(1)
    order = feats[pruned.influence[feats].argsort(descending=True)].tolist()
    keys = [graph.node_key(n) for n in order[:4]]
    body = {
        "graph": "dallas.safetensors",
        "pins": keys + ["logit@0"],
        "supernodes": [{"name": "A", "members": keys[:3]}],
    }
    out = _write(made, "/api/subgraph", body).json()
    keep = torch.zeros(graph.n_nodes, dtype=torch.bool)
    keep[order[:4]] = True
    keep[graph.logit_offset] = True
    expected = scores(graph, keep=keep)
    assert out["replacement"] == pytest.approx(expected.replacement, rel=1e-3)
    assert out["completeness"] == pytest.approx(expected.completeness, rel=1e-3)
    assert [g["name"] for g in out["groups"]] == ["A", keys[3], "logit@0"]
    to_logit = next(e for e in out["edges"] if e["source"] == 0 and e["target"] == 2)
    assert to_logit["weight"] == pytest.approx(
        float(graph.adjacency[graph.n_features, order[:3]].sum()), rel=1e-3
    )


def test_intervention_from_the_api(made):
    graph: Graph = made["graph"]
    key = graph.node_key(int(prune(graph).influence[: graph.n_features].argmax()))
    out = _write(made, "/api/intervene", {"graph": "dallas.safetensors", "nodes": [key], "op": "zero"}).json()
    assert set(out["modes"]) == {"constrained", "free"}
    # constrained: exactly the graph's direct edge, here (one feature, nothing downstream moves)
    direct = -float(graph.adjacency[graph.n_features, graph.node_index()[key]])
    assert out["targets"][0]["constrained"] == pytest.approx(direct, abs=1e-3 + 1e-3 * abs(direct))
    assert out["modes"]["free"]["before"][0]["token"] == " Austin"
    bad = _write(made, "/api/intervene", {"graph": "dallas.safetensors", "nodes": ["logit@0"], "op": "zero"})
    assert bad.status_code == 400 and "logit" in bad.json()["error"]


def test_swap_from_the_api(made, tmp_path):
    """Dallas's features at the city zeroed and Los Angeles's specific ones put in: ' Sacramento' rises,
    above its matched random control; another model's graph, or a prompt that does not differ, is refused."""
    from clew.attribution import trace
    from clew.intervene.swap import specific

    model, tc, dallas = made["model"], made["tc"], made["graph"]
    la = trace(model, tc, LA, progress=False)
    dallas.save(tmp_path / "dallas.safetensors")
    la.save(tmp_path / "la.safetensors")
    dataclasses.replace(la, model_name="gpt2").save(tmp_path / "other-model.safetensors")
    dallas.save(tmp_path / "same-prompt.safetensors")
    explorer = Explorer(tmp_path, load_model=lambda graph: (model, tc))
    client = testclient.TestClient(build_app(explorer), base_url=BASE)
    headers = {"X-Clew-Token": explorer.token, **ORIGIN}

    city = dallas.token_strings.index(" Dallas")
    keys = [dallas.node_key(n) for n in specific(dallas, la)]
    assert keys and all(key.endswith(f"@{city}") for key in keys)
    body = {"graph": "dallas.safetensors", "nodes": keys, "op": "swap", "other": "la.safetensors"}
    out = client.post("/api/intervene", json=body, headers=headers).json()
    this, other = out["answers"]
    assert (this["label"], other["label"]) == (" Austin", " Sacramento")
    assert out["span"] == [[" Dallas"], [" Los", " Angeles"]]
    assert out["n_out"] == len(keys) and 0 < out["n_in"] < la.n_features
    assert other["after"] > other["before"] and other["after"] > other["control"]
    assert this["after"] < this["before"]
    assert out["modes"]["free"]["before"][0]["token"] == " Austin"
    assert out["modes"]["free"]["after"][0]["token"] == " Sacramento"
    assert out["control"]["after"][0]["token"] != " Sacramento"

    for other_name, message in (
        ("other-model.safetensors", "model"),
        ("same-prompt.safetensors", "do not differ"),
        ("dallas.safetensors", "this graph"),
        ("nothing.safetensors", "nothing.safetensors"),
    ):
        bad = client.post("/api/intervene", json={**body, "other": other_name}, headers=headers)
        assert bad.status_code == 400 and message in bad.json()["error"], bad.json()
        assert "\n" not in bad.json()["error"]
    error = client.post("/api/intervene", json={**body, "nodes": ["error L0@7"]}, headers=headers)
    assert error.status_code == 400 and "not a feature" in error.json()["error"]


def test_saving_state_round_trips_and_rewrites_atomically(made, tmp_path):
    c = made["client"]
    path = made["root"] / "dallas.safetensors"
    graph: Graph = made["graph"]
    key = graph.node_key(0)
    state = {
        "supernodes": [{"name": "S", "members": [key, graph.node_key(1)], "why": "", "source": "user"}],
        "labels": {key: "my label"},
        "pins": [key],
        "view": {"threshold": 0.7, "errors": False, "selected": key},
    }
    inode = os.stat(path).st_ino
    assert _write(made, "/api/state", {"graph": "dallas.safetensors", "state": state}).status_code == 200
    assert os.stat(path).st_ino != inode  # a new file renamed into place
    saved = Graph.load(path)
    assert saved.annotations["supernodes"][0]["name"] == "S" and saved.annotations["view"]["threshold"] == 0.7
    assert torch.equal(saved.adjacency, graph.adjacency)
    view = c.get("/api/view", params={"graph": "dallas.safetensors", "extra": key}).json()
    assert view["annotations"]["labels"][key] == "my label"
    assert view["nodes"]["label"][view["nodes"]["key"].index(key)] == "my label"
    assert not list(made["root"].glob(".*.tmp"))


# --- safety ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../dallas.safetensors",
        "viewer/../../x.safetensors",
        "/etc/passwd",
        "%2e%2e/dallas.safetensors",
        "..%2fdallas.safetensors",
        "viewer\\..\\dallas.safetensors",
        "graph-metadata.json",
        "C:/x.json",
        "link-out.safetensors",
        "a\x00.json",
    ],
)
def test_traversal_is_refused(made, name, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    made["graph"].save(outside)
    link = made["root"] / "link-out.safetensors"
    if not link.exists():
        link.symlink_to(outside)
    r = made["client"].get("/api/view", params={"graph": name})
    assert r.status_code == 400, (name, r.text)
    assert "link-out.safetensors" not in [
        g["name"] for g in made["client"].get("/api/graphs").json()["graphs"]
    ]
    # the raw path, encoded in the URL itself
    raw = made["client"].get("/api/view?graph=%2e%2e%2fdallas.safetensors")
    assert raw.status_code == 400
    with pytest.raises(ClewError):
        made["explorer"].library.path(name)


def test_writes_need_the_token_and_the_servers_origin(made):
    path = made["root"] / "dallas.safetensors"
    before = _digest(path)
    body = {"graph": "dallas.safetensors", "state": {"pins": []}}
    c = made["client"]
    assert c.post("/api/state", json=body).status_code == 403  # neither
    assert _write(made, "/api/state", body, token=False).status_code == 403  # no token
    wrong = {"X-Clew-Token": "x" * 43}
    assert c.post("/api/state", json=body, headers={**wrong, **ORIGIN}).status_code == 403
    token = {"X-Clew-Token": made["explorer"].token}
    assert c.post("/api/state", json=body, headers=token).status_code == 403  # no Origin
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "https://127.0.0.1:8765", "null"):
        r = c.post("/api/state", json=body, headers={**token, "Origin": origin})
        assert r.status_code == 403, origin
    r = _write(made, "/api/state", body, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # another host name (DNS rebinding) is refused for reading too
    assert c.get("/api/graphs", headers={"Host": "evil.example:8765"}).status_code == 403
    assert _digest(path) == before


@pytest.mark.parametrize(
    "state",
    [
        "not an object",
        {"pins": ["L99/F1@0"]},
        {"pins": "L0/F1@0"},
        {"supernodes": [{"name": "", "members": ["logit@0"]}]},
        {"supernodes": [{"name": "x", "members": []}]},
        {"supernodes": [{"name": "x", "members": ["logit@0"], "source": "evil"}]},
        {"supernodes": [{"name": "x", "members": ["logit@0"], "why": {"token@1": "not a member"}}]},
        {"supernodes": [{"name": "x", "members": ["logit@0"], "examples": "not a list"}]},
        {"supernodes": [{"name": "x", "members": ["logit@0"], "examples": [3]}]},
        {"labels": {"nope": "x"}},
        {"labels": {"logit@0": 3}},
        {"view": {"threshold": 2}},
        {"view": {"threshold": "0.5"}},
        {"view": {"zoom": 1}},
        {"extra": 1},
        {"labels": {"logit@0": "x" * 10_000}},
    ],
)
def test_bad_state_is_refused_and_the_file_untouched(made, state):
    path = made["root"] / "dallas.safetensors"
    before = _digest(path)
    r = _write(made, "/api/state", {"graph": "dallas.safetensors", "state": state})
    assert r.status_code == 400 and r.json()["error"].startswith("state:")
    assert _digest(path) == before


def test_automatic_supernodes_are_kept_when_saving(made, tmp_path):
    """clew.circuits writes supernodes (why per member, a side, examples); the page sends them back
    with a user's."""
    import shutil

    from clew.attribution import analyze
    from clew.circuits import find_circuit

    shutil.copy(made["root"] / "dallas.safetensors", made["root"] / "circuit.safetensors")
    graph = Graph.load(made["root"] / "circuit.safetensors")
    graph.annotations = {}
    find_circuit(graph, analyze(graph))
    graph.annotations["supernodes"][0]["examples"] = ["… containing⟦ Dallas⟧ is Austin… (1.00)"]
    graph.save(made["root"] / "circuit.safetensors")
    auto = graph.annotations["supernodes"]
    try:
        assert auto and all(s["source"] == "auto" for s in auto)
        view = made["client"].get("/api/view", params={"graph": "circuit.safetensors"}).json()
        assert view["annotations"]["supernodes"] == auto
        mine = {"name": "mine", "members": ["logit@0"], "why": "", "source": "user"}
        state = {"supernodes": [*auto, mine]}
        assert _write(made, "/api/state", {"graph": "circuit.safetensors", "state": state}).status_code == 200
        saved = Graph.load(made["root"] / "circuit.safetensors").annotations["supernodes"]
        assert saved == [*auto, mine]
    finally:
        (made["root"] / "circuit.safetensors").unlink()


def test_viewer_json_is_read_only(made):
    path = made["root"] / "ct.json"
    before = _digest(path)
    r = _write(made, "/api/state", {"graph": "ct.json", "state": {"pins": []}})
    assert r.status_code == 400 and "read-only" in r.json()["error"]
    assert _digest(path) == before
    view = made["client"].get("/api/view", params={"graph": "ct.json"}).json()
    assert view["writable"] is False and "logit@0" in view["nodes"]["key"]


def test_background_server_listens_on_loopback_only(made):
    server = Background(Explorer(made["root"]))
    try:
        assert server.server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
        import urllib.request

        with urllib.request.urlopen(server.url + "api/graphs", timeout=10) as r:
            assert "dallas.safetensors" in [g["name"] for g in json.loads(r.read())["graphs"]]
        # not reachable on this machine's other addresses
        others = {
            info[4][0]
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            if not info[4][0].startswith("127.")
        }
        for address in others:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((address, server.port)) != 0, address
    finally:
        server.stop()


def test_show_gives_the_page_of_a_graph(made):
    from clew.explorer import show

    shown = show(made["root"] / "dallas.safetensors")
    url = shown if isinstance(shown, str) else shown.src
    assert url.startswith("http://127.0.0.1:") and url.endswith("#g=dallas.safetensors")
    import urllib.request

    with urllib.request.urlopen(url.split("#")[0], timeout=10) as r:
        assert b"clew-token" in r.read()


def test_views_are_cached_per_threshold(made):
    views = Views()
    graph = made["graph"]
    assert views.pruned(graph, 0.8, 0.98) is views.pruned(graph, 0.8, 0.98)
    assert views.pruned(graph, 0.7, 0.98) is not views.pruned(graph, 0.8, 0.98)


# --- the command line ------------------------------------------------------------------------------------


def test_clew_serve_help_and_mistakes(capsys, tmp_path):
    from clew.cli import main

    assert main(["serve", "--help"]) == 0
    assert "127.0.0.1" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2


def test_trace_open_serves_the_output_folder(monkeypatch, tmp_path, capsys):
    import clew.commands.serve as serve
    from clew.cli import main

    called = {}

    def fake(folder, explorer, host, port, open_browser, graph=None):
        called.update(folder=folder, host=host, open=open_browser, graph=graph, explorer=explorer)

    monkeypatch.setattr(serve, "serve_folder", fake)
    out = tmp_path / "g"
    assert (
        main(
            ["trace", "Fact: the capital of France is", "-m", "organism", "-o", str(out), "--quiet", "--open"]
        )
        == 0
    )
    assert called["host"] == "127.0.0.1" and called["open"] is True
    assert (out / called["graph"]).is_file() and called["explorer"].find_store(
        Graph.load(out / called["graph"])
    )

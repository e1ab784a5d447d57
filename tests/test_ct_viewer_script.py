"""examples/ct_viewer_screenshot.py without a browser: the check of the local scripts, the rewrite of
circuit-tracer's index.html, the node it clicks and the supernodes it puts in the page's URL."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from clew.errors import ClewError

ROOT = Path(__file__).resolve().parents[1]
CT_INDEX = ROOT / "bench/.ctvenv/lib/python3.11/site-packages/circuit_tracer/frontend/assets/index.html"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "ct_viewer_screenshot", ROOT / "examples/ct_viewer_screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def page(script) -> str:
    tags = "\n".join(f"<script src='{s.url}'></script>" for s in script.SCRIPTS)
    return f"<!DOCTYPE html>\n{tags}\n<script src='./util.js'></script>\n"


def test_every_outside_url_becomes_a_local_file(script):
    html = script.rewrite_index(page(script))
    assert "http" not in html
    srcs = [line.split("'")[1] for line in html.splitlines() if line.startswith("<script src=")]
    assert srcs == [f"./lib/{s.name}" for s in script.SCRIPTS] + ["./util.js"]
    assert len({s.name for s in script.SCRIPTS}) == 6


def test_a_page_that_loads_other_scripts_is_refused(script):
    first = script.SCRIPTS[0].url
    with pytest.raises(ClewError, match="hotserver-client-ws.js 0 times"):
        script.rewrite_index(page(script).replace(first, "https://elsewhere/x.js"))
    twice = page(script) + f"<script src='{first}'></script>\n"
    with pytest.raises(ClewError, match="2 times"):
        script.rewrite_index(twice)


@pytest.mark.skipif(not CT_INDEX.exists(), reason="circuit-tracer 0.5.0 is not installed in bench/.ctvenv")
def test_circuit_tracers_own_page_loads_nothing_from_outside_once_rewritten(script):
    html = script.rewrite_index(CT_INDEX.read_text(encoding="utf-8"))
    assert "https://" not in html and "http://" not in html
    assert html.count("./lib/") == 6


def test_the_local_scripts_are_checked(script, tmp_path):
    with pytest.raises(ClewError, match="not a folder"):
        script.check_lib(tmp_path / "none")
    for s in script.SCRIPTS:
        (tmp_path / s.name).write_text("x")
    with pytest.raises(ClewError, match=r"hotserver-client-ws.js: SHA-256"):
        script.check_lib(tmp_path)
    script.check_lib(tmp_path, any_version=True)
    empty = script.SCRIPTS[0]
    assert hashlib.sha256(b"").hexdigest() == empty.sha256  # the hot-reload client is an empty file
    (tmp_path / "d3.js").unlink()
    with pytest.raises(ClewError, match=r"d3.js: missing \(npm d3@7.9.0"):
        script.check_lib(tmp_path, any_version=True)


def graph_json(tmp_path: Path, supernodes: list) -> Path:
    def node(node_id, pos, act, ftype="cross layer transcoder"):
        return {"node_id": node_id, "ctx_idx": pos, "activation": act, "feature_type": ftype, "clerp": ""}

    data = {
        "metadata": {"prompt_tokens": ["<bos>", " Dallas", " is"]},
        "qParams": {"supernodes": supernodes},
        "nodes": [
            node("0_1_1", 1, 0.2),
            node("1_5_1", 1, 0.7),
            node("0_-1_1", 1, 9.0, "mlp reconstruction error"),
            node("2_3_2", 2, 5.0),
        ],
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_the_clicked_node_is_the_most_active_feature_at_the_token(script, tmp_path):
    path = graph_json(tmp_path, [])
    assert script.pick_node(path, " Dallas")["node_id"] == "1_5_1"  # not the error, not another position
    assert script.pick_node(path, " is")["node_id"] == "2_3_2"
    assert script.pick_node(path, " Dallas", "0_1_1")["node_id"] == "0_1_1"
    with pytest.raises(ClewError, match="--token ' Austin': not a token"):
        script.pick_node(path, " Austin")
    with pytest.raises(ClewError, match="keeps no feature node"):
        script.pick_node(path, "<bos>")
    with pytest.raises(ClewError, match="--node 9_9_9"):
        script.pick_node(path, " Dallas", "9_9_9")


def test_supernodes_reach_the_page_through_its_url(script, tmp_path):
    assert script.supernodes_param(graph_json(tmp_path, [])) == ""
    groups = [["say 'Austin' & 100%", "1_5_1", "2_3_2"], ["Dallas → Texas", "0_1_1"]]
    param = script.supernodes_param(graph_json(tmp_path, groups))
    value = parse_qs(urlparse("http://h/?slug=s" + param).query)["supernodes"][0]  # URLSearchParams
    # still percent-encoded after URLSearchParams, so that the page's own decodeURIComponent (strict:
    # a bare '%' throws) gives the JSON back
    assert re.fullmatch(r"[A-Za-z0-9_.!~*'()-]*(%[0-9A-F]{2}[A-Za-z0-9_.!~*'()-]*)*", value)
    assert json.loads(unquote(value, errors="strict")) == groups

"""The explorer in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

One reader's session on the organism's Dallas graph, step by step, each step checked against the graph
file and against clew computing the same thing in Python, with a screenshot of each step in
``$CLEW_ARTIFACTS`` (default ``tests/.artifacts/explorer``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from explorer_graphs import make_folder

from clew.attribution import Graph, import_json, prune

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
    ),
]
ARTIFACTS = Path(os.environ.get("CLEW_ARTIFACTS", Path(__file__).parent / ".artifacts")) / "explorer"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clew.commands.serve import store_finder
    from clew.explorer import Background, Explorer

    made = make_folder(tmp_path_factory.mktemp("explorer-browser"), contrast=True)
    model, tc = made["model"], made["tc"]
    explorer = Explorer(made["root"], load_model=lambda graph: (model, tc), find_store=store_finder())
    server = Background(explorer)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    yield {**made, "server": server}
    server.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
    return page, errors


def _ready(page):
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)


def _shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _node_count(graph: Graph, threshold: float) -> int:
    return int(prune(graph, threshold).node_mask.sum())


def _click(page, key, double=False):
    where = page.evaluate("(k) => window.clew.where(k)", key)
    assert where is not None, f"{key} is not drawn"
    box = page.locator("#graph").bounding_box()
    x, y = box["x"] + where["x"], box["y"] + where["y"]
    (page.mouse.dblclick if double else page.mouse.click)(x, y)


def _set_threshold(page, value):
    page.evaluate(
        "(v) => { const s = document.getElementById('threshold'); s.value = v;"
        " document.body.dataset.ready = '0'; s.dispatchEvent(new Event('change')); }",
        str(value),
    )
    _ready(page)


def test_a_reader_session(setup, browser):
    graph: Graph = setup["graph"]
    url = setup["server"].url_of("dallas.safetensors")
    page, errors = _page(browser)
    requests = []
    page.on("request", lambda r: requests.append(r.url))

    # open the demo graph: every node of the pruned graph is drawn
    page.goto(url)
    _ready(page)
    _shot(page, "1-open")
    canvas = page.locator("#graph")
    assert int(canvas.get_attribute("data-nodes")) == _node_count(graph, 0.8)

    # the slider: fewer nodes at a lower threshold, as many as clew's pruning keeps
    _set_threshold(page, 0.5)
    _shot(page, "2-slider")
    assert int(canvas.get_attribute("data-nodes")) == _node_count(graph, 0.5) < _node_count(graph, 0.8)
    _set_threshold(page, 0.8)

    # click the most influential feature: its kept edges in and out are highlighted
    pruned = prune(graph, 0.8)
    features = torch.nonzero(pruned.node_mask[: graph.n_features]).squeeze(1)
    top = int(features[pruned.influence[features].argmax()])
    key = graph.node_key(top)
    _click(page, key)
    page.wait_for_selector(f"#node-panel[data-key='{key}']")
    _shot(page, "3-click")
    rows = graph.row_nodes()
    expected = int(pruned.edge_mask[int((rows == top).nonzero())].sum() + pruned.edge_mask[:, top].sum())
    assert canvas.get_attribute("data-selected") == key
    assert int(canvas.get_attribute("data-highlighted")) == expected > 0
    assert page.locator("#node-panel .edge").count() > 0
    assert page.locator("#feature-panel .example").count() > 0  # the organism's shipped feature store

    # pin three nodes (double-click), group two into a supernode and rename it
    order = features[pruned.influence[features].argsort(descending=True)][:3].tolist()
    pins = [graph.node_key(n) for n in order]
    for k in pins:
        _click(page, k, double=True)
    page.wait_for_selector("#pins .pin:nth-child(3)")
    for k in pins[:2]:
        page.locator(f"#pins .pin[data-key='{k}'] input[type=checkbox]").check()
    page.locator("#group").click()
    page.wait_for_selector("#pins .supernode")
    page.locator("#pins .supernode .rename").fill("Texas")
    page.locator("#pins .supernode .rename").press("Enter")
    page.wait_for_selector("#pins .supernode[data-name='Texas']")
    page.wait_for_selector("#scores:not([data-replacement=''])")
    assert "replacement" in page.locator("#scores").text_content()
    _shot(page, "4-supernode")

    # run one intervention (zero the supernode) and read the new top token
    page.locator("#pins .supernode input[type=checkbox]").check()
    page.locator("#run-test").click()
    page.wait_for_selector("#test-result[data-top]", timeout=60_000)
    _shot(page, "5-intervention")
    from clew.intervene import Edit, Interventions, intervene, parse_node

    model, tc = setup["model"], setup["tc"]
    outcome = intervene(
        model, tc, graph.tokens, Interventions([Edit(parse_node(k)) for k in pins[:2]]), mode="free"
    )
    expected_top = model.tokenizer.decode([outcome.top(1)[0][0]])
    assert page.locator("#test-result").get_attribute("data-top") == expected_top

    # swap the same supernode for the Los Angeles graph's specific features: the top token is clew's
    from clew.explorer.experiment import run_swap

    page.locator("#test-op").select_option("swap")
    assert page.locator("#test-value").is_hidden()
    others = page.locator("#test-other option").evaluate_all("(os) => os.map((o) => o.value)")
    assert others == ["la.safetensors"]  # the folder's other clew graphs, not this one nor JSON
    page.locator("#test-other").select_option("la.safetensors")
    page.locator("#run-test").click()
    page.wait_for_selector("#test-result[data-op='swap'][data-top]", timeout=60_000)
    _shot(page, "5b-swap")
    swap = run_swap(graph, pins[:2], setup["la"], "la.safetensors", lambda g: (model, tc))
    assert (
        page.locator("#test-result").get_attribute("data-top") == swap["modes"]["free"]["after"][0]["token"]
    )
    assert "Sacramento" in page.locator("#test-result").text_content()

    # save, reload from the file alone (no state in the URL), and find the state restored
    page.locator("#save").click()
    page.wait_for_selector("body[data-saved]")
    saved = Graph.load(setup["root"] / "dallas.safetensors").annotations
    assert [s["name"] for s in saved["supernodes"]] == ["Texas"] and saved["pins"] == pins
    page.goto("about:blank")
    page.goto(url)
    _ready(page)
    page.wait_for_selector("#pins .supernode[data-name='Texas']")
    assert page.locator("#pins .pin").count() == 2  # the supernode and the third pin
    assert page.evaluate("window.clew.state.selected") == pins[-1]  # the last one double-clicked
    _shot(page, "6-restored")

    # open a circuit-tracer JSON graph from the list
    page.locator("#graph-select").select_option("ct.json")
    page.wait_for_selector("body[data-graph='ct.json'][data-ready='1']")
    ct = import_json(setup["root"] / "ct.json")
    assert int(canvas.get_attribute("data-nodes")) == _node_count(ct, 0.8)
    assert page.locator("#save").is_disabled()
    _shot(page, "7-circuit-tracer")

    assert not errors, errors
    host = f"http://127.0.0.1:{setup['server'].port}/"
    assert all(r.startswith(host) or r.startswith("data:") or r == "about:blank" for r in requests), requests

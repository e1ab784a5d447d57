"""The command line end to end on a tiny model: files written, and user mistakes as one-line errors."""

from __future__ import annotations

import importlib
import json

import pytest
from hf_tiny import save_hf_model, save_tiny_tokenizer
from tiny_dictionaries import random_transcoder

from clew.attribution import Graph
from clew.cli import main
from clew.dictionaries import save_transcoder
from clew.models.config import ModelConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = root / "model"
    save_hf_model("llama", model)
    save_tiny_tokenizer(model)
    cfg = ModelConfig.from_hf_file(model / "config.json")
    save_transcoder(random_transcoder(cfg, "plt-jumprelu"), root / "tc")
    other = ModelConfig.from_hf_file(model / "config.json")
    other.d_model = 32
    save_transcoder(random_transcoder(other, "plt-jumprelu"), root / "tc-other")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trace_writes_graph_json_and_metadata(setup, capsys):
    out = setup / "graphs"
    prompt = "w1 w2 w3 w4 w5 w1 w2"
    code, stdout, _ = run(
        capsys,
        "trace",
        prompt,
        "-m",
        str(setup / "model"),
        "-d",
        str(setup / "tc"),
        "-o",
        str(out),
        "--quiet",
        "--verify",
        "20",
    )
    assert code == 0
    assert "top predictions" in stdout and "replacement" in stdout and "largest edge error" in stdout
    slug = "w1-w2-w3-w4-w5-w1-w2"
    graph = Graph.load(out / f"{slug}.safetensors")
    assert graph.token_strings[0] == "<bos>" and graph.n_pos == 8
    meta = json.loads((out / "graph-metadata.json").read_text())
    assert meta["graphs"][0]["slug"] == slug
    assert json.loads((out / f"{slug}.json").read_text())["metadata"]["prompt"] == prompt


def test_trace_prunes_and_scores_once(setup, capsys, monkeypatch):
    """One pruning and two scorings (whole and pruned) per graph: each is one influence pass over the
    adjacency, so a trace without a feature budget makes exactly three, whatever it writes."""
    prune_module = importlib.import_module("clew.attribution.prune")  # the module, not the function
    calls = []
    influence = prune_module.influence
    monkeypatch.setattr(prune_module, "influence", lambda *a, **k: calls.append(1) or influence(*a, **k))
    argv = ["trace", "w1 w2 w3", "-m", str(setup / "model"), "-d", str(setup / "tc"), "--quiet"]
    code, stdout, _ = run(capsys, *argv, "-o", str(setup / "counted"))
    assert code == 0 and "replacement" in stdout
    assert len(calls) == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["   "], "prompt is empty"),
        ([" ".join(["w1"] * 3000)], "context"),
        (["w1 w2", "--target", "w1 w2"], "not a single token"),
        (["w1 w2", "--dictionary-other"], "d_model"),
        (["w1 w2", "--model-missing"], "no such file"),
    ],
)
def test_user_mistakes_are_one_line_errors(setup, capsys, args, message):
    argv = [
        "trace",
        args[0],
        "-m",
        str(setup / "model"),
        "-d",
        str(setup / "tc"),
        "--quiet",
        "-o",
        str(setup / "x"),
    ]
    argv += [a for a in args[1:] if not a.startswith("--dictionary-other") and a != "--model-missing"]
    if "--dictionary-other" in args:
        argv[argv.index("-d") + 1] = str(setup / "tc-other")
    if "--model-missing" in args:
        argv[argv.index("-m") + 1] = str(setup / "nowhere")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("clew: error: ") and err.count("\n") == 1 and message in err, err


def test_qk_explains_a_score_and_refuses_bad_addresses(setup, capsys):
    base = ["qk", "w1 w2 w3 w1 w2", "-m", str(setup / "model"), "-d", str(setup / "tc")]
    code, stdout, _ = run(capsys, *base, "--head", "2.1", "--top", "3")
    assert code == 0
    assert "attends to" in stdout and "top pairs" in stdout and "pairs sum to" in stdout
    assert "read, through its values" in stdout  # the strongest earlier head, expanded
    code, stdout, _ = run(capsys, *base, "--head", "1.0", "--query", "-1", "--key", "2", "--no-expand")
    assert code == 0 and "key 2" in stdout and "read, through" not in stdout
    for args, phrase in (
        (["--head", "2"], "LAYER.HEAD"),
        (["--head", "7.0"], "layer 7 is out of range"),
        (["--head", "0.9"], "head 9 is out of range"),
        (["--head", "0.0", "--query", "2", "--key", "4"], "comes after query position 2"),
        (["--head", "0.0", "--key", "40"], "--key 40"),
    ):
        code, _, err = run(capsys, *base, *args)
        assert code == 2 and phrase in err and err.count("\n") == 1, (args, err)


def test_intervene_and_check_commands(setup, capsys):
    base = ["-m", str(setup / "model"), "-d", str(setup / "tc")]
    code, stdout, _ = run(
        capsys, "intervene", "w1 w2 w3 w4", *base, "--scale", "L0/F1@-1=0", "--generate", "3"
    )
    assert code == 0 and "before:" in stdout and "after (free (errors frozen))" in stdout
    assert "continued:" in stdout and "with the interventions:" in stdout
    code, stdout, _ = run(
        capsys, "intervene", "w1 w2 w3 w4", *base, "--zero", "error L1@2", "--mode", "constrained"
    )
    assert code == 0 and "after (constrained)" in stdout
    vector = setup / "v.txt"
    vector.write_text(" ".join(["0.5"] * 64))
    code, stdout, _ = run(capsys, "intervene", "w1 w2 w3 w4", *base, "--steer", f"L1@2+:{vector}")
    assert code == 0 and "steer L1@2+" in stdout
    for args, phrase in (
        (["--zero", "L0/F@1"], "cannot read node"),
        (["--set", "L0/F1@1"], "NODE=VALUE"),
        (["--zero", "L0/F999@1"], "out of range"),
        (["--zero", "L0/F1@40"], "outside the 5 tokens"),
        (["--zero", "error L0@1"], "constrained mode only"),
        (["--steer", f"L1@2:{setup / 'missing.npy'}"], "no such vector file"),
        (["--swap", "w2"], "--answers"),
    ):
        code, _, err = run(capsys, "intervene", "w1 w2 w3 w4", *base, *args)
        assert code == 2 and phrase in err and err.count("\n") == 1, (args, err)
    (setup / "short.txt").write_text("1 2 3")
    code, _, err = run(capsys, "intervene", "w1 w2 w3 w4", *base, "--steer", f"L1@2:{setup / 'short.txt'}")
    assert code == 2 and "has 3 numbers" in err
    # check: a traced graph, default groups and a named one
    out = setup / "checked"
    assert run(capsys, "trace", "w1 w2 w3 w1 w2", *base, "-o", str(out), "--quiet")[0] == 0
    graph_file = str(out / "w1-w2-w3-w1-w2.safetensors")
    code, stdout, _ = run(capsys, "check", graph_file, *base)
    assert code == 0 and "agreement" in stdout and "top 20 by influence" in stdout
    first = Graph.load(graph_file).describe(0)
    code, stdout, _ = run(capsys, "check", graph_file, *base, "--group", "mine", first)
    assert code == 0 and "| mine |" in stdout
    code, _, err = run(capsys, "check", graph_file, *base, "--group", "mine", "L0/F9999@1")
    assert code == 2 and "not a feature node of the graph" in err

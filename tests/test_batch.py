"""Batch tracing: the prompts file, the graph store, in process and on Ray, faults and bad input."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from clew.attribution import Graph, trace
from clew.batch import BatchConfig, GraphStore, read_prompts, run_batch
from clew.batch.prompts import PromptSpec
from clew.cli import main
from clew.errors import ClewError
from clew.resolve import default_dictionary, load_model_and_dictionary

ROOT = Path(__file__).resolve().parent.parent
TENSORS = (
    "tokens",
    "features",
    "activations",
    "logit_tokens",
    "logit_probs",
    "adjacency",
    "error_norms",
    "logit_vectors",
)


def two_hop(n: int) -> list[dict]:
    spec = importlib.util.spec_from_file_location("two_hop_batch", ROOT / "examples" / "two_hop_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prompts(n)


def specs_of(records: list[dict]) -> list[PromptSpec]:
    return [
        PromptSpec(r["id"], r["prompt"], fields={k: r[k] for k in ("city", "state", "split")})
        for r in records
    ]


def config(**kw) -> BatchConfig:
    return BatchConfig("organism", default_dictionary("organism"), threads=1, **kw)


@pytest.fixture(scope="module")
def organism():
    return load_model_and_dictionary("organism", None)


def same_graph(a: Graph, b: Graph) -> bool:
    return (
        all(torch.equal(getattr(a, n), getattr(b, n)) for n in TENSORS) and a.logit_labels == b.logit_labels
    )


def test_prompt_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("The capital of the state containing Dallas is\n\nThe opposite of small is\n")
    read = read_prompts(text)
    assert [s.prompt for s in read.specs] == [
        "The capital of the state containing Dallas is",
        "The opposite of small is",
    ]
    assert not read.problems and read.specs[0].id != read.specs[1].id
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"prompt": "The opposite of small is", "id": "a", "targets": " large", "pair": 1}\n'
        '{"prompt": "The opposite of hot is", "id": "b"\n'  # broken
        '{"prompt": "The opposite of up is", "contrast": [" down", " up"]}\n'
        '{"prompt": "", "id": "c"}\n'
        '{"prompt": "The opposite of wet is", "id": "a"}\n'
    )
    read = read_prompts(jsonl)
    assert [s.id for s in read.specs][0] == "a" and len(read.specs) == 2
    assert read.specs[0].targets == (" large",) and read.specs[0].fields == {"pair": 1}
    assert read.specs[1].contrast == (" down", " up")
    assert [p.split(":")[0] for p in read.problems] == ["line 2", "line 4", "line 5"]
    assert "not valid JSON" in read.problems[0] and "also on line 1" in read.problems[2]


def test_in_process_store_is_trace_and_resumes(tmp_path, organism):
    model, tc = organism
    specs = specs_of(two_hop(6))
    store = GraphStore(tmp_path / "store")
    report = run_batch(store, specs, config(), progress=False)
    assert report.traced == 6 and store.counts() == {"done": 6}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in store.rows():
            assert same_graph(
                Graph.load(store.graph_path(row)), trace(model, tc, row["prompt"], progress=False)
            )
            assert row["n_features"] > 0 and 0 < row["replacement"] <= 1 and row["top_token"].strip()
    finally:
        torch.set_num_threads(threads)
    # a crash between the row and the file: the row is 'writing' and its file half there
    victim = next(store.rows())
    store.db.execute("UPDATE graphs SET status = 'writing' WHERE id = ?", (victim["id"],))
    store.db.commit()
    store.graph_path(victim).write_bytes(b"half a graph")
    (store.graph_path(victim).parent / ".x.safetensors.123.tmp").write_bytes(b"")
    report = run_batch(store, specs, config(), progress=False)
    assert report.traced == 1 and report.skipped == 5 and store.counts() == {"done": 6}
    assert not list((tmp_path / "store").rglob("*.tmp"))
    assert Graph.load(store.graph_path(store.row(victim["id"]))).prompt == victim["prompt"]


def test_store_of_another_dictionary_or_settings_is_refused(tmp_path):
    from clew.assets import ORGANISM

    specs = specs_of(two_hop(2))
    store = GraphStore(tmp_path / "store")
    run_batch(store, specs[:1], config(), progress=False)
    plt = BatchConfig("organism", str(ORGANISM.dictionary_path("plt")), threads=1)
    with pytest.raises(ClewError, match="written with dictionary .* whose weights differ"):
        run_batch(store, specs, plt, progress=False)
    with pytest.raises(ClewError, match="written with max_n_logits=10"):
        run_batch(store, specs, config(max_n_logits=3), progress=False)
    assert store.counts() == {"done": 1, "pending": 1}


def test_full_disk_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    specs = specs_of(two_hop(5))
    store = GraphStore(tmp_path / "store")
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ClewError, match="disk is full .*2 graphs written.*rerun the same command"):
        run_batch(store, specs, config(), progress=False)
    assert not list((tmp_path / "store").rglob("*.tmp"))
    assert len(list((tmp_path / "store").rglob("*.safetensors"))) == 2
    monkeypatch.setattr(os, "fsync", real)
    report = run_batch(store, specs, config(), progress=False)
    assert report.traced == 3 and store.counts() == {"done": 5}
    import sqlite3

    def full(*_):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(GraphStore, "add", full)  # the index's own write fails the same way
    with pytest.raises(ClewError, match="disk is full"):
        run_batch(store, specs, config(), progress=False)
    assert all(Graph.load(store.graph_path(r)).prompt == r["prompt"] for r in store.rows())


def test_cli_skips_a_malformed_line_and_traces_the_rest(tmp_path, capsys):
    records = two_hop(3)
    lines = [json.dumps(r) for r in records]
    lines.insert(1, '{"prompt": "The capital of the state containing Reno is",')
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc = main(
        [
            "trace-batch",
            str(path),
            "-m",
            "organism",
            "--out",
            str(tmp_path / "s"),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and "line 2: not valid JSON" in err and "3 graphs traced" in out
    store = GraphStore(tmp_path / "s", create=False)
    assert [r["id"] for r in store.rows()] == [r["id"] for r in records]
    assert main(["trace-batch", str(path), "-m", "organism", "--out", str(tmp_path / "s"), "--quiet"]) == 1
    assert "0 graphs traced, 3 already done" in capsys.readouterr().out


def test_unreachable_ray_address_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    path = tmp_path / "p.txt"
    path.write_text("The opposite of small is\n")
    rc = main(
        ["trace-batch", str(path), "-m", "organism", "--out", str(tmp_path / "s"), "--address", "127.0.0.1:1"]
    )
    assert rc == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from clew.batch.cluster import connect

    started = connect(ray, None, workers=2, cpus_per_worker=1.0)
    yield ray
    if started:
        ray.shutdown()


def test_ray_two_workers_write_the_graphs_of_a_sequential_trace(tmp_path, organism, local_ray):
    model, tc = organism
    records = two_hop(100)
    assert {r["split"] for r in records} == {"train", "heldout"}
    store = GraphStore(tmp_path / "store")
    report = run_batch(store, specs_of(records), config(), ray=True, workers=2, progress=False)
    assert report.traced == 100 and store.counts() == {"done": 100}
    rows = list(store.rows())
    assert len({r["worker"] for r in rows}) == 2  # both workers traced
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in rows:  # the file a sequential trace writes, read back
            trace(model, tc, row["prompt"], progress=False).save(tmp_path / "sequential.safetensors")
            sequential = Graph.load(tmp_path / "sequential.safetensors")
            assert same_graph(Graph.load(store.graph_path(row)), sequential)
    finally:
        torch.set_num_threads(threads)


def test_ray_worker_killed_mid_run(tmp_path, local_ray):
    records = two_hop(30)
    store = GraphStore(tmp_path / "store")
    seen: list[str] = []
    killed: list[int] = []

    def kill_one(out):
        seen.append(out.worker)
        others = [w for w in seen if w != out.worker]
        if len(seen) >= 6 and others and not killed:  # the other worker, busy with its prompt
            killed.append(int(others[-1].rsplit(":", 1)[1]))
            os.kill(killed[0], signal.SIGKILL)

    report = run_batch(
        store, specs_of(records), config(), ray=True, workers=2, progress=False, on_outcome=kill_one
    )
    assert killed and report.workers_lost >= 1
    rows = list(store.rows())
    assert len(rows) == 30 and store.counts() == {"done": 30}
    files = list((tmp_path / "store" / "graphs").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    assert len([f for f in files if f.suffix == ".safetensors"]) == 30
    assert sum(r["attempts"] for r in rows) == 30 + report.workers_lost  # each lost prompt traced again once
    assert len({r["worker"] for r in rows}) >= 2


def test_ray_is_imported_only_on_the_ray_path(tmp_path, monkeypatch):
    import subprocess

    script = "import sys, clew.batch, clew.commands.trace_batch; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ClewError, match=r"Ray is not installed: pip install clew\[ray\]"):
        run_batch(GraphStore(tmp_path / "s"), specs_of(two_hop(1)), config(), ray=True, progress=False)


def test_a_prompt_that_cannot_be_traced_fails_alone(tmp_path):
    specs = specs_of(two_hop(2)) + [
        PromptSpec("bad", "The opposite of small is", targets=(" not one token",))
    ]
    store = GraphStore(tmp_path / "s")
    report = run_batch(store, specs, config(), progress=False)
    assert report.traced == 2 and [i for i, _ in report.failed] == ["bad"]
    assert "not a single token" in store.row("bad")["error"] and store.counts() == {"done": 2, "failed": 1}
    assert run_batch(store, specs, config(), progress=False).traced == 0  # failed prompts are not retried ...
    report = run_batch(store, specs, config(), retry_failed=True, progress=False)  # ... unless asked
    assert report.failed and store.row("bad")["attempts"] == 2


def test_ray_run_interrupted_then_resumed(tmp_path, local_ray):
    specs = specs_of(two_hop(12))
    store = GraphStore(tmp_path / "store")
    seen = []

    def interrupt(out):
        seen.append(out.id)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, with the other worker's prompt in flight

    with pytest.raises(KeyboardInterrupt):
        run_batch(store, specs, config(), ray=True, workers=2, progress=False, on_outcome=interrupt)
    assert store.counts() == {"done": 3, "pending": 9}
    report = run_batch(store, specs, config(), ray=True, workers=2, progress=False)
    assert report.traced == 9 and report.skipped == 3 and store.counts() == {"done": 12}
    assert not [f for f in (tmp_path / "store").rglob("*") if f.name.endswith(".tmp")]

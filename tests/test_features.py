"""The feature store: exactness of what is stored, resumption, labels, viewer files, commands, bad input."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from clew.errors import ClewError
from clew.features import CollectConfig, FeatureStore, collect, feature_activations, fingerprint
from clew.features.contexts import contexts_of
from clew.organism.features import OrganismCorpus

N_DOCS = 64
SETTINGS = dict(
    max_docs=N_DOCS, ctx_len=40, docs_per_block=16, n_top=4, n_random=6, progress=False, threads=1
)


@pytest.fixture(scope="module")
def organism():
    from clew.resolve import load_model_and_dictionary

    return load_model_and_dictionary("organism", None)


@pytest.fixture(scope="module")
def store_path(organism, tmp_path_factory):
    model, tc = organism
    path = tmp_path_factory.mktemp("store") / "clt.sqlite"
    collect(model, tc, OrganismCorpus(), path, CollectConfig(**SETTINGS))
    return path


def _contexts(model):
    """The collection's contexts in corpus order (what context numbers refer to), rebuilt independently."""
    tok = model.tokenizer
    docs = list(itertools.islice(OrganismCorpus().documents(0), N_DOCS))
    out = []
    for doc in docs:
        ids = [tok.bos_token_id, *tok(doc, add_special_tokens=False)["input_ids"]]
        out += contexts_of(ids, tok.bos_token_id, SETTINGS["ctx_len"])
    return out


@pytest.fixture(scope="module")
def recomputed(organism):
    """layer -> list over contexts of [P, F] activations, each context run alone."""
    model, tc = organism
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in tc.layers}
    for ctx in _contexts(model):
        for layer, a in feature_activations(model, tc, torch.tensor([ctx])).items():
            acts[layer].append(a[0])
    return acts


def test_every_stored_activation_equals_the_dictionarys_recomputation(store_path, organism, recomputed):
    model, tc = organism
    contexts = _contexts(model)
    checked = 0
    with FeatureStore.open(store_path) as store:
        assert store.meta["n_contexts"] == len(contexts)
        for record in store.features():
            per_ctx = [a[:, record.feature] for a in recomputed[record.layer]]
            for e in record.examples:
                fresh = per_ctx[e.context]
                assert e.activation == pytest.approx(float(fresh[e.position]), rel=1e-5, abs=1e-6)
                assert e.tokens[e.peak] == contexts[e.context][e.position]
                start = e.position - e.peak
                assert e.tokens == contexts[e.context][start : start + len(e.tokens)]
                window = fresh[start : start + len(e.tokens)].clone()
                window[: max(0, 1 - start)] = 0.0  # BOS is shown as 0
                torch.testing.assert_close(torch.tensor(e.acts), window, rtol=2e-3, atol=2e-3)
                checked += 1
    assert checked > 1000


def test_top_examples_and_statistics_are_those_of_the_whole_corpus(store_path, recomputed):
    with FeatureStore.open(store_path) as store:
        K = store.meta["settings"]["n_top"]
        for layer, acts in recomputed.items():
            peaks = torch.stack([a[1:].amax(0) for a in acts])  # [contexts, F], BOS left out
            flat = torch.cat([a[1:] for a in acts])  # every token but BOS
            for record in store.features(layer):
                f = record.feature
                want = sorted((v for v in peaks[:, f].tolist() if v > 0), reverse=True)[:K]
                got = [e.activation for e in record.of_kind("top")]
                assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
                assert record.n_active == int((flat[:, f] > 0).sum())
                assert record.act_max == pytest.approx(float(flat[:, f].max()), rel=1e-5, abs=1e-6)
                assert sum(record.histogram) == record.n_active
                assert len(record.of_kind("random")) == min(
                    record.n_active, store.meta["settings"]["n_random"]
                )
                assert len({(e.context, e.position) for e in record.of_kind("random")}) == len(
                    record.of_kind("random")
                )


def _tables(path: Path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    out = {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
        for t in ("features", "labels", "feature_tokens", "vocab", "state")
    }
    out["meta"] = [r for r in conn.execute("SELECT * FROM meta ORDER BY 1") if r[0] != "created"]
    conn.close()
    return out


def test_a_killed_and_resumed_collection_equals_an_uninterrupted_one(store_path, organism, tmp_path):
    model, tc = organism
    out = tmp_path / "resumed.sqlite"

    def kill(docs_done: int) -> None:
        if docs_done == 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(
            model, tc, OrganismCorpus(), out, CollectConfig(**SETTINGS, checkpoint_seconds=0), on_block=kill
        )
    assert not out.exists() and (tmp_path / "resumed.sqlite.partial").exists()
    result = collect(model, tc, OrganismCorpus(), out, CollectConfig(**SETTINGS))
    assert result.resumed and result.n_docs == N_DOCS
    assert _tables(out) == _tables(store_path)


def test_batches_run_in_threads_give_the_same_store_killed_or_not(store_path, organism, tmp_path):
    """Two threads run two batches' forward passes at once; the state is still updated in order, so the
    store (killed inside the run and resumed, too) is the one-thread store, byte for byte."""
    model, tc = organism
    out = tmp_path / "threads.sqlite"
    two = {**SETTINGS, "threads": 2}

    def kill(docs_done: int) -> None:
        if docs_done == 48:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(model, tc, OrganismCorpus(), out, CollectConfig(**two, checkpoint_seconds=0), on_block=kill)
    result = collect(model, tc, OrganismCorpus(), out, CollectConfig(**two))
    assert result.resumed and result.n_docs == N_DOCS and result.cpu_seconds > 0
    assert _tables(out) == _tables(store_path)


def test_labels_are_deterministic_and_cover_every_live_feature(store_path):
    from clew.features.labels import auto_labels

    with FeatureStore.open(store_path) as store:
        records = list(store.features())
        assert len(records) == len(store.layers) * store.n_features
        again = auto_labels(records, store.vocab())
        for r in records:
            label = store.label(r.layer, r.feature)
            assert label == again[(r.layer, r.feature)]
            assert label and (r.n_active > 0 or label.startswith("dead"))


def test_a_labeller_adds_labels_beside_the_automatic_ones(store_path, tmp_path):
    from clew.features.labels import label_with

    path = tmp_path / "copy.sqlite"
    shutil.copy(store_path, path)
    with FeatureStore.open(path, writable=True) as store:
        n = label_with(
            store, lambda card: f"my {card['layer']}/{card['feature']}", "mine", only=[(1, 5), (2, 7)]
        )
        live = [k for k in [(1, 5), (2, 7)] if store.feature(*k).n_active]
        assert n == len(live)
        for layer, f in live:
            assert store.label(layer, f) == f"my {layer}/{f}"
            assert set(store.labels(layer, f)) == {"auto", "mine"}
        with pytest.raises(ClewError):
            label_with(store, lambda card: "x", "auto")


def test_viewer_files_have_the_viewers_fields(store_path, tmp_path):
    from clew.features.viewer import cantor, export_features

    with FeatureStore.open(store_path) as store:
        live = next(r for r in store.features(2) if r.n_active > 10)
        n = export_features(store, tmp_path, only=[(2, live.feature)])
    assert n == 1
    body = json.loads((tmp_path / f"{cantor(2, live.feature)}.json").read_text())
    assert body["index"] == cantor(2, live.feature)
    for key in ("examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max", "histogram"):
        assert key in body
    top = body["examples_quantiles"][0]
    assert top["quantile_name"] == "Top activations"
    ex = top["examples"][0]
    assert len(ex["tokens"]) == len(ex["tokens_acts_list"]) and 0 <= ex["train_token_ind"] < len(ex["tokens"])
    assert max(ex["tokens_acts_list"]) == pytest.approx(body["act_max"], rel=1e-2)
    assert sum(body["histogram"]) == live.n_active
    assert all(isinstance(t, str) for t in body["top_logits"])
    assert json.loads((tmp_path / "index.json").read_text())["features"][str(body["index"])][:2] == [
        2,
        live.feature,
    ]


def test_show_search_and_export_commands(store_path, tmp_path, capsys):
    from clew.cli import main

    with FeatureStore.open(store_path) as store:
        live = next(r for r in store.features(3) if r.n_active > 10)
        peak = store.text(live.of_kind("top")[0].tokens[live.of_kind("top")[0].peak])
        n_features = store.n_features
    assert main(["features", "show", f"3/{live.feature}", "--store", str(store_path)]) == 0
    shown = capsys.readouterr().out
    assert f"feature 3/{live.feature}" in shown and "⟦" in shown and "histogram" in shown
    assert main(["features", "search", peak, "--store", str(store_path), "--limit", "100000"]) == 0
    assert f"3/{live.feature}" in capsys.readouterr().out.replace(" ", "")
    assert main(["features", "export", "--store", str(store_path), "--out", str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f").glob("*.json"))) == 4 * n_features + 1


def _one_line_error(capsys, argv) -> str:
    from clew.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clew: error:") and "\n" not in err
    return err


def test_bad_input_is_a_one_line_error(store_path, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    out = str(tmp_path / "x.sqlite")
    base = ["features", "collect", "--model", "organism", "--out", out, "--quiet"]
    assert "no text" in _one_line_error(capsys, [*base, "--data", str(empty)])
    assert "not a text file" in _one_line_error(capsys, [*base, "--data", str(binary)])
    assert "out of range" in _one_line_error(
        capsys, ["features", "show", "3/99999", "--store", str(store_path)]
    )
    assert "no layer" in _one_line_error(capsys, ["features", "show", "9/1", "--store", str(store_path)])
    newer = tmp_path / "newer.sqlite"
    shutil.copy(store_path, newer)
    conn = sqlite3.connect(newer)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    assert "newer clew" in _one_line_error(capsys, ["features", "show", "1/1", "--store", str(newer)])
    assert "not a clew feature store" in _one_line_error(
        capsys, ["features", "show", "1/1", "--store", str(binary)]
    )


def test_a_store_of_another_dictionary_is_refused(store_path):
    from clew.assets import ORGANISM
    from clew.dictionaries import load_transcoder

    plt = load_transcoder(ORGANISM.dictionary_path("plt"))
    with pytest.raises(ClewError, match="another dictionary"):
        FeatureStore.open(store_path, fingerprint=fingerprint(plt))


def test_trace_carries_store_labels_into_the_viewers_json(store_path, tmp_path, capsys):
    from clew.cli import main

    out = tmp_path / "g"
    argv = ["trace", "The capital of the state containing Dallas is", "--model", "organism", "--quiet"]
    assert main([*argv, "--out", str(out), "--features", str(store_path), "--slug", "dallas"]) == 0
    printed = capsys.readouterr().out
    assert "most influential features" in printed
    graph = json.loads((out / "dallas.json").read_text())
    assert graph["metadata"]["feature_details"]["feature_json_base_url"] == "./graph_data/features"
    with FeatureStore.open(store_path) as store:
        for node in graph["nodes"]:
            if node["feature_type"] == "cross layer transcoder":
                layer, index = int(node["layer"]), int(node["node_id"].split("_")[1])
                assert node["clerp"] == store.label(layer, index)
                assert (out / "features" / f"{node['feature']}.json").is_file()


SHIPPED = Path(__file__).resolve().parent.parent / "clew" / "assets" / "organism" / "clt" / "features.sqlite"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the organism's store is not built in this checkout")
def test_every_feature_of_the_demo_graphs_has_examples_and_a_label(organism):
    from clew.attribution import analyze, trace
    from clew.commands.demo import demo_prompts

    model, tc = organism
    with FeatureStore.open(SHIPPED, fingerprint=fingerprint(tc)) as store:
        for _, prompt in demo_prompts():
            graph = trace(model, tc, prompt, progress=False)
            keep = analyze(graph).pruned.node_mask
            for n in range(graph.n_features):
                if keep[n]:
                    layer, _, index = graph.features[n].tolist()
                    record = store.feature(layer, index)
                    assert record.of_kind("top"), f"{layer}/{index} in {prompt!r} has no examples"
                    assert store.label(layer, index)


def test_a_labeller_command_through_the_cli(store_path, tmp_path, capsys):
    import sys

    from clew.cli import main

    path = tmp_path / "copy.sqlite"
    shutil.copy(store_path, path)
    script = tmp_path / "labeller.py"
    script.write_text(
        "import json, sys\ncard = json.load(sys.stdin)\nprint('cmd', card['layer'], card['feature'])\n"
    )
    with FeatureStore.open(path, writable=True) as store:  # keep it quick: one layer's worth of live features
        with store.conn:
            store.conn.execute("DELETE FROM features WHERE layer != 0 OR feature >= 3")
    command = f"{sys.executable} {script}"
    assert main(["features", "label", "--store", str(path), "--command", command, "--source", "cmd"]) == 0
    assert main(["features", "label", "--store", str(path), "--auto"]) == 0
    capsys.readouterr()
    with FeatureStore.open(path) as store:
        for f in range(3):
            if store.feature(0, f).n_active:
                assert store.labels(0, f)["cmd"] == f"cmd 0 {f}"
                assert store.label(0, f) == f"cmd 0 {f}"


def test_a_run_killed_inside_a_block_resumes_from_its_last_whole_block(
    store_path, organism, tmp_path, monkeypatch
):
    import importlib

    collect_mod = importlib.import_module(
        "clew.features.collect"
    )  # the module (the package exports a function of that name)
    model, tc = organism
    out = tmp_path / "mid.sqlite"
    real, calls = collect_mod.fold, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # the second block, half done (one batch and 4 layers per block)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "fold", dying)
    with pytest.raises(KeyboardInterrupt):
        collect(model, tc, OrganismCorpus(), out, CollectConfig(**SETTINGS, checkpoint_seconds=0))
    monkeypatch.setattr(collect_mod, "fold", real)
    result = collect(model, tc, OrganismCorpus(), out, CollectConfig(**SETTINGS))
    assert result.resumed
    assert _tables(out) == _tables(store_path)

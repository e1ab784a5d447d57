"""The bad-input corpus: every mistake a careful new user or a hostile file can make, answered by one
line, a non-zero exit and no change to any file that was there before.

Each case builds its inputs in a fresh folder (copies of a tiny model, its dictionary and a traced graph,
damaged as the case says), runs the command in-process through :func:`clew.cli.main` from inside that
folder, and checks: exit code not 0; exactly one ``error:`` line on stderr, the last one; no traceback;
every file in the case's folder and in the shared inputs byte for byte as before. A second part feeds
damaged viewer JSON to :func:`clew.attribution.viewer_import.import_json` (only :class:`ClewError` may come out).
The fuzz test at the end mutates graph files, dictionary configs and viewer JSON at random (seeded,
bounded in time).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hf_tiny import save_hf_model, save_tiny_tokenizer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_dictionaries import random_transcoder

from clew.attribution import Graph
from clew.attribution.viewer_import import import_json
from clew.cli import main
from clew.dictionaries import load_transcoder, save_transcoder
from clew.errors import ClewError
from clew.models.config import ModelConfig

PROMPT = "w1 w2 w3 w4"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The shared, valid inputs: a tiny Llama with a tokenizer, a dictionary for it, one of another
    width, a traced graph and its viewer JSON. No case may change any of them."""
    root = tmp_path_factory.mktemp("world")
    save_hf_model("llama", root / "model")
    save_tiny_tokenizer(root / "model")
    cfg = ModelConfig.from_hf_file(root / "model" / "config.json")
    save_transcoder(random_transcoder(cfg, "plt-jumprelu"), root / "tc")
    cfg.d_model = 32
    save_transcoder(random_transcoder(cfg, "plt-jumprelu"), root / "tc-other")
    argv = ["trace", PROMPT, "-m", str(root / "model"), "-d", str(root / "tc"), "-o", str(root / "graphs")]
    assert main([*argv, "--quiet", "--slug", "g"]) == 0
    return root


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders, by path, with the sha256 of its bytes (links by their target)."""
    out = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---- building damaged inputs ------------------------------------------------------------------------


def copy_model(t: Path, w: Path) -> Path:
    shutil.copytree(w / "model", t / "model")
    return t / "model"


def copy_tc(t: Path, w: Path) -> Path:
    shutil.copytree(w / "tc", t / "tc")
    return t / "tc"


def copy_graph(t: Path, w: Path) -> Path:
    shutil.copy(w / "graphs" / "g.safetensors", t / "g.safetensors")
    return t / "g.safetensors"


def edit_config(**changes) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        path = copy_model(t, w) / "config.json"
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DELETE:
                config.pop(key)
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return setup


_DELETE = object()


def write_model_file(name: str, text: str | bytes) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        path = copy_model(t, w) / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def edit_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        path = copy_model(t, w) / "model.safetensors"
        weights = load_file(path)
        change(weights)
        save_file(weights, path)

    return setup


def no_tokenizer(t: Path, w: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy_model(t, w) if not (t / "model").exists() else t / "model").joinpath(name).unlink(
            missing_ok=True
        )


def remove_model_file(name: str) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        (copy_model(t, w) / name).unlink()

    return setup


def with_index(weight_map) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        folder = copy_model(t, w)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    return setup


def edit_dictionary(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        path = copy_tc(t, w) / "config.yaml"
        config = yaml.safe_load(path.read_text())
        change(config)
        path.write_text(yaml.safe_dump(config))

    return setup


def write_dictionary_file(name: str, data: str | bytes) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        path = copy_tc(t, w) / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def edit_layer(change: Callable[[dict[str, torch.Tensor]], None], layer: int = 1):
    def setup(t: Path, w: Path) -> None:
        path = copy_tc(t, w) / f"layer_{layer}.safetensors"
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)

    return setup


def edit_graph(meta_change=None, tensor_change=None) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        src = w / "graphs" / "g.safetensors"
        with safe_open(src, framework="pt") as f:
            meta = json.loads(f.metadata()["clew"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta_change:
            meta_change(meta)
        if tensor_change:
            tensor_change(tensors)
        save_file(tensors, t / "g.safetensors", metadata={"clew": json.dumps(meta)})

    return setup


def write_file(name: str, data: str | bytes) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        (t / name).parent.mkdir(parents=True, exist_ok=True)
        (t / name).write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(t: Path, w: Path) -> None:
        for s in setups:
            s(t, w)

    return setup


def out_with_old_graph(index_text: str) -> Callable[[Path, Path], None]:
    """An output folder holding an earlier trace's files and the given graph-metadata.json."""

    def setup(t: Path, w: Path) -> None:
        shutil.copytree(w / "graphs", t / "out")
        (t / "out" / "graph-metadata.json").write_text(index_text)

    return setup


def nothing(t: Path, w: Path) -> None:
    pass


def set_key(d: dict, key: str, value) -> None:
    d[key] = value


def set_in(d: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for key in head:
        d = d.setdefault(key, {})
    d[last] = value


def nan_at(name: str, index=0):
    def change(tensors: dict[str, torch.Tensor]) -> None:
        t = tensors[name].clone()
        t.view(-1)[index] = float("nan")
        tensors[name] = t

    return change


def planted_checkpoint(t: Path, w: Path) -> None:
    """A checkpoint that would create t/ran when unpickled, plus a one-token corpus."""
    (t / "run").mkdir()
    torch.save({"payload": _Planted(t / "ran")}, t / "run" / "checkpoint.pt")
    (t / "text.txt").write_text("w1 w2 w3 w4 w5 w6\n" * 50)


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickled_npy(t: Path, w: Path) -> None:
    np.save(t / "v.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


# ---- the cases --------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    argv: list[str]
    """``{w}`` is the shared inputs' folder, ``{t}`` the case's own (also the working folder)."""
    setup: Callable[[Path, Path], None] = nothing
    expect: str = ""
    """A piece of text the error line must hold."""


M, D = "{w}/model", "{w}/tc"
TRACE = ["trace", PROMPT, "-m", M, "-d", D, "--quiet", "-o", "{t}/out"]


def trace(*extra: str, model: str = M, dictionary: str = D, prompt: str = PROMPT) -> list[str]:
    argv = [*TRACE, *extra]
    argv[1], argv[3], argv[5] = prompt, model, dictionary
    return argv


CASES = [
    # --- clew trace: options out of range or of the wrong type
    Case("batch-size-0", trace("--batch-size", "0"), expect="--batch-size"),
    Case("batch-size-negative", trace("--batch-size", "-4"), expect="--batch-size"),
    Case("batch-size-text", trace("--batch-size", "many"), expect="--batch-size"),
    Case("max-n-logits-0", trace("--max-n-logits", "0"), expect="--max-n-logits"),
    Case("max-n-logits-negative", trace("--max-n-logits", "-3"), expect="--max-n-logits"),
    Case("max-feature-nodes-negative", trace("--max-feature-nodes", "-1"), expect="--max-feature-nodes"),
    Case("logit-prob-0", trace("--desired-logit-prob", "0"), expect="--desired-logit-prob"),
    Case("logit-prob-above-1", trace("--desired-logit-prob", "1.5"), expect="--desired-logit-prob"),
    Case("logit-prob-nan", trace("--desired-logit-prob", "nan"), expect="--desired-logit-prob"),
    Case("node-threshold-nan", trace("--node-threshold", "nan"), expect="--node-threshold"),
    Case("node-threshold-negative", trace("--node-threshold", "-0.1"), expect="--node-threshold"),
    Case("node-threshold-0", trace("--node-threshold", "0"), expect="--node-threshold"),
    Case("edge-threshold-5", trace("--edge-threshold", "5"), expect="--edge-threshold"),
    Case("edge-threshold-inf", trace("--edge-threshold", "inf"), expect="--edge-threshold"),
    Case("verify-negative", trace("--verify", "-1"), expect="--verify"),
    Case("dtype-unknown", trace("--dtype", "float16"), expect="--dtype"),
    Case("unknown-option", trace("--nodes", "5"), expect="unrecognized"),
    Case("contrast-one-token", trace("--contrast", "w1"), expect="--contrast"),
    Case("device-unknown", trace("--device", "tpu9"), expect="--device"),
    Case("device-absent-cuda", trace("--device", "cuda:99"), expect="--device"),
    Case("slug-escapes", trace("--slug", "../escaped"), expect="slug"),
    Case("slug-with-slash", trace("--slug", "a/b"), expect="slug"),
    Case("slug-hidden", trace("--slug", ".hidden"), expect="slug"),
    Case("slug-too-long", trace("--slug", "a" * 200), expect="slug"),
    Case("scan-with-slash", trace("--scan", "org/model"), expect="scan"),
    Case("scan-and-local-viewer", trace("--scan", "m", "--local-viewer"), expect="--scan"),
    Case("local-viewer-without-store", trace("--local-viewer"), expect="--features"),
    Case("features-store-missing", trace("--features", "{t}/none.sqlite"), expect="none.sqlite"),
    Case("prompt-empty", trace(prompt="   "), expect="empty"),
    Case("prompt-not-utf8", trace(prompt="w1 \udcff w2"), expect="UTF-8"),
    Case("prompt-too-long", trace(prompt=" ".join(["w1"] * 3000)), expect="context"),
    Case("target-two-tokens", trace("--target", "w1 w2"), expect="single token"),
    Case("model-missing", trace(model="{t}/nowhere"), expect="nowhere"),
    Case("model-unknown-name", trace(model="no-such-model"), expect="unknown model"),
    Case("dictionary-missing", trace(dictionary="{t}/nowhere"), expect="nowhere"),
    Case("dictionary-other-width", trace(dictionary="{w}/tc-other"), expect="d_model"),
    # --- clew trace: where it writes
    Case("out-is-a-file", trace(), write_file("out", "x"), expect="--out"),
    Case("out-under-a-file", [*trace()[:-1], "{t}/file/out"], write_file("file", "x"), expect="--out"),
    Case("out-broken-link", trace(), lambda t, w: (t / "out").symlink_to(t / "gone"), expect="--out"),
    Case("index-not-json", trace("--slug", "g"), out_with_old_graph("{"), expect="graph-metadata.json"),
    Case("index-graphs-not-list", trace("--slug", "g"), out_with_old_graph('{"graphs": 3}'), expect="graphs"),
    Case("index-a-list", trace("--slug", "g"), out_with_old_graph("[]"), expect="graph-metadata.json"),
    Case("index-too-deep", trace("--slug", "g"), out_with_old_graph("[" * 100000), expect="graph-metadata"),
    # --- model folders
    Case("config-not-json", trace(model="{t}/model"), write_model_file("config.json", "{"), expect="config.json"),
    Case("config-a-list", trace(model="{t}/model"), write_model_file("config.json", "[1]"), expect="config.json"),
    Case("config-no-type", trace(model="{t}/model"), edit_config(model_type=_DELETE), expect="model_type"),
    Case("config-unknown-type", trace(model="{t}/model"), edit_config(model_type="mamba"), expect="mamba"),
    Case("config-size-string", trace(model="{t}/model"), edit_config(hidden_size="64"), expect="config.json"),
    Case("config-negative-heads", trace(model="{t}/model"), edit_config(num_attention_heads=-4), expect="config"),
    Case("config-zero-heads", trace(model="{t}/model"), edit_config(num_attention_heads=0), expect="config"),
    Case("config-fraction-layers", trace(model="{t}/model"), edit_config(num_hidden_layers=2.5), expect="config"),
    Case("config-absurd-vocab", trace(model="{t}/model"), edit_config(vocab_size=10**13), expect="config"),
    Case("config-bigger-than-weights", trace(model="{t}/model"), edit_config(vocab_size=5000), expect="config"),
    Case("config-more-layers", trace(model="{t}/model"), edit_config(num_hidden_layers=40), expect="missing"),
    Case("config-rope-yarn", trace(model="{t}/model"), edit_config(rope_scaling={"rope_type": "yarn"}), expect="yarn"),
    Case("config-rope-not-dict", trace(model="{t}/model"), edit_config(rope_scaling=[1]), expect="config"),
    Case("config-layer-types-int", trace(model="{t}/model"), edit_config(layer_types=3), expect="config"),
    Case("config-eps-string", trace(model="{t}/model"), edit_config(rms_norm_eps="small"), expect="config"),
    Case("weights-garbage", trace(model="{t}/model"), write_model_file("model.safetensors", b"\x00" * 64), expect="safetensors"),
    Case("weights-missing", trace(model="{t}/model"), remove_model_file("model.safetensors"), expect="safetensors"),
    Case("weights-tensor-missing", trace(model="{t}/model"), edit_weights(lambda w: w.pop("model.norm.weight")), expect="model.norm.weight"),
    Case("weights-wrong-shape", trace(model="{t}/model"), edit_weights(lambda w: set_key(w, "model.norm.weight", torch.ones(300))), expect="shape"),
    Case("weights-nan-embeddings", trace(model="{t}/model"), edit_weights(nan_at("model.embed_tokens.weight", 70)), expect="NaN"),
    Case("weights-nan-final-norm", trace(model="{t}/model"), edit_weights(nan_at("model.norm.weight")), expect="NaN"),
    Case("weights-inf-mlp", trace(model="{t}/model"), edit_weights(lambda w: set_key(w, "model.layers.1.mlp.up_proj.weight", w["model.layers.1.mlp.up_proj.weight"] * float("inf"))), expect="infinite"),
    Case("index-garbage", trace(model="{t}/model"), write_model_file("model.safetensors.index.json", "garbage"), expect="index.json"),
    Case("index-no-map", trace(model="{t}/model"), write_model_file("model.safetensors.index.json", "{}"), expect="weight_map"),
    Case("index-map-a-list", trace(model="{t}/model"), with_index([1, 2]), expect="weight_map"),
    Case("index-absolute-path", trace(model="{t}/model"), with_index({"model.norm.weight": "/etc/passwd"}), expect="outside"),
    Case("index-dotdot-path", trace(model="{t}/model"), with_index({"model.norm.weight": "../w.safetensors"}), expect="outside"),
    Case("index-file-number", trace(model="{t}/model"), with_index({"model.norm.weight": 7}), expect="weight_map"),
    Case("folder-without-config", trace(model="{t}/empty"), lambda t, w: (t / "empty").mkdir(), expect="config.json"),
    Case("gguf-garbage", trace(model="{t}/m.gguf"), write_file("m.gguf", b"GGUF" + b"\xff" * 40), expect="m.gguf"),
    Case("not-a-gguf", trace(model="{t}/m.bin"), write_file("m.bin", b"\x00" * 40), expect="gguf"),
    Case("no-tokenizer-text-prompt", trace(model="{t}/model"), no_tokenizer, expect="token ids"),
    # --- dictionaries
    Case("tc-config-not-yaml", trace(dictionary="{t}/tc"), write_dictionary_file("config.yaml", "a: [1"), expect="YAML"),
    Case("tc-config-a-list", trace(dictionary="{t}/tc"), write_dictionary_file("config.yaml", "- 1\n"), expect="config.yaml"),
    Case("tc-kind-unknown", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "model_kind", "sae")), expect="model_kind"),
    Case("tc-no-input-hook", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: c.pop("feature_input_hook")), expect="feature_input_hook"),
    Case("tc-hook-unknown", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "feature_input_hook", "hook_x")), expect="hook_x"),
    Case("tc-k-string", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_in(c, "clew.k", "five")), expect="k"),
    Case("tc-top-k-string", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "k", "five")), expect="k"),
    Case("tc-n-layers-negative", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_in(c, "clew.n_layers", -1)), expect="n_layers"),
    Case("tc-layers-text", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_in(c, "clew.layers", ["a"])), expect="layers"),
    Case("tc-k-fraction", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_in(c, "clew.k", 2.5)), expect="k: expected int"),
    Case("tc-activation-unknown", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "activation", "swish")), expect="swish"),
    Case("tc-list-absolute", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "transcoders", ["layer_0.safetensors", "/etc/passwd", "layer_2.safetensors"])), expect="outside"),
    Case("tc-list-dotdot", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "transcoders", ["layer_0.safetensors", "../model/model.safetensors", "layer_2.safetensors"])), expect="outside"),
    Case("tc-list-not-list", trace(dictionary="{t}/tc"), edit_dictionary(lambda c: set_key(c, "transcoders", "layer_0.safetensors")), expect="transcoders"),
    Case("tc-layer-missing", trace(dictionary="{t}/tc"), lambda t, w: (copy_tc(t, w) / "layer_1.safetensors").unlink(), expect="layer_1"),
    Case("tc-layer-garbage", trace(dictionary="{t}/tc"), write_dictionary_file("layer_1.safetensors", b"\x10" * 99), expect="layer_1"),
    Case("tc-layer-wrong-shape", trace(dictionary="{t}/tc"), edit_layer(lambda x: set_key(x, "W_enc", torch.ones(24, 64, 2))), expect="W_enc"),
    Case("tc-layer-no-encoder", trace(dictionary="{t}/tc"), edit_layer(lambda x: x.pop("W_enc")), expect="W_enc"),
    Case("tc-nan-encoder", trace(dictionary="{t}/tc"), edit_layer(lambda x: set_key(x, "b_enc", torch.full_like(x["b_enc"], float("nan")))), expect="NaN"),
    # --- graph files (clew diff reads two; clew heads --graph and clew check one)
    Case("graph-missing", ["diff", "{t}/none.safetensors", "{w}/graphs/g.safetensors"], expect="none.safetensors"),
    Case("graph-garbage", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], write_file("g.safetensors", b"\x01" * 77), expect="g.safetensors"),
    Case("graph-empty", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], write_file("g.safetensors", b""), expect="g.safetensors"),
    Case("graph-format", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: set_key(m, "format", "x")), expect="format"),
    Case("graph-no-prompt", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: m.pop("prompt")), expect="prompt"),
    Case("graph-layers-string", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: set_key(m, "n_layers", "3")), expect="n_layers"),
    Case("graph-layers-huge", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: set_key(m, "n_layers", 10**9)), expect="layers"),
    Case("graph-few-token-strings", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: m["token_strings"].pop()), expect="token_strings"),
    Case("graph-no-adjacency", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=lambda x: x.pop("adjacency")), expect="adjacency"),
    Case("graph-adjacency-shape", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=lambda x: set_key(x, "adjacency", x["adjacency"][:, :-1].contiguous())), expect="adjacency"),
    Case("graph-features-float", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=lambda x: set_key(x, "features", x["features"].float())), expect="features"),
    Case("graph-feature-layer-out", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=lambda x: set_key(x, "features", x["features"] + torch.tensor([50, 0, 0]))), expect="features"),
    Case("graph-nan-edges", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=nan_at("adjacency", 5)), expect="NaN"),
    Case("graph-nan-activation", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(tensor_change=nan_at("activations")), expect="activation"),
    Case("graph-settings-list", ["diff", "{t}/g.safetensors", "{w}/graphs/g.safetensors"], edit_graph(lambda m: set_key(m, "settings", [1])), expect="settings"),
    Case("heads-graph-huge-layers", ["heads", "--graph", "{t}/g.safetensors", "--edge", "a", "b", "-m", M, "-d", D], edit_graph(lambda m: set_key(m, "n_layers", 10**6)), expect="layers"),
    Case("check-graph-garbage", ["check", "{t}/g.safetensors", "-m", M, "-d", D], write_file("g.safetensors", b"{}"), expect="g.safetensors"),
    Case("qk-graph-no-logits", ["qk", "{t}/g.safetensors", "--head", "0.0", "-m", M, "-d", D], edit_graph(tensor_change=lambda x: x.pop("logit_tokens")), expect="logit_tokens"),
    Case("qk-head-out-of-range", ["qk", PROMPT, "--head", "99.0", "-m", M, "-d", D], expect="99"),
    Case("qk-head-text", ["qk", PROMPT, "--head", "one", "-m", M, "-d", D], expect="head"),
    # --- training
    Case("train-lr-nan", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/run", "--lr", "nan"], write_file("text.txt", "w1 w2\n"), expect="lr"),
    Case("train-batch-size-0", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/run", "--batch-size", "0"], write_file("text.txt", "w1 w2\n"), expect="batch_size"),
    Case("train-steps-negative", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/run", "--steps", "-5"], write_file("text.txt", "w1 w2\n"), expect="steps"),
    Case("train-data-missing", ["train", "--model", M, "--data", "{t}/none.txt", "--out", "{t}/run", "--steps", "2"], expect="none.txt"),
    Case("train-one-token-corpus", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/run", "--steps", "2", "--ctx-len", "16"], write_file("text.txt", "w1\n\n" * 40), expect="token"),
    Case("train-out-is-a-file", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/text.txt", "--steps", "2"], write_file("text.txt", "w1 w2 w3\n" * 40), expect="--out"),
    Case("train-resume-planted-pickle", ["train", "--model", M, "--data", "{t}/text.txt", "--out", "{t}/run", "--steps", "2", "--resume", "--ctx-len", "8"], planted_checkpoint, expect="checkpoint"),
    # --- organism build never deletes what it did not make
    Case("organism-out-non-empty", ["organism", "build", "--out", "{t}/mine", "--tiny", "--quiet"], write_file("mine/notes.txt", "keep"), expect="--out"),
    Case("organism-out-working-folder", ["organism", "build", "--out", ".", "--tiny", "--quiet"], write_file("notes.txt", "keep"), expect="--out"),
    Case("organism-out-a-file", ["organism", "build", "--out", "{t}/f", "--tiny", "--quiet"], write_file("f", "keep"), expect="--out"),
    # --- convert
    Case("convert-no-overwrite", ["convert", D, "{t}/dst"], lambda t, w: shutil.copytree(w / "tc", t / "dst"), expect="--overwrite"),
    Case("convert-onto-itself", ["convert", "{t}/tc", "{t}/tc", "--overwrite"], lambda t, w: copy_tc(t, w), expect="source"),
    Case("convert-broken-source-overwrite", ["convert", "{t}/tc", "{t}/dst", "--overwrite"], both(write_dictionary_file("layer_2.safetensors", b"\x10" * 99), lambda t, w: shutil.copytree(w / "tc-other", t / "dst")), expect="layer_2"),
    Case("convert-dtype-unknown", ["convert", D, "{t}/dst", "--dtype", "int8"], expect="--dtype"),
    # --- intervene
    Case("intervene-layer-out", ["intervene", PROMPT, "-m", M, "-d", D, "--zero", "L99/F0@0"], expect="99"),
    Case("intervene-scale-text", ["intervene", PROMPT, "-m", M, "-d", D, "--scale", "L0/F1@0=much"], expect="much"),
    Case("intervene-bad-spec", ["intervene", PROMPT, "-m", M, "-d", D, "--zero", "feature one"], expect="feature one"),
    Case("intervene-steer-missing", ["intervene", PROMPT, "-m", M, "-d", D, "--steer", "1@0:{t}/none.npy"], expect="none.npy"),
    Case("intervene-steer-pickle", ["intervene", PROMPT, "-m", M, "-d", D, "--steer", "1@0:{t}/v.npy"], pickled_npy, expect="v.npy"),
    Case("intervene-generate-negative", ["intervene", PROMPT, "-m", M, "-d", D, "--generate", "-1"], expect="--generate"),
    Case("intervene-temperature-nan", ["intervene", PROMPT, "-m", M, "-d", D, "--generate", "2", "--temperature", "nan"], expect="--temperature"),
    # --- heads, features, batches
    Case("heads-sequences-0", ["heads", "-m", M, "--sequences", "0"], expect="--sequences"),
    Case("heads-length-negative", ["heads", "-m", M, "--length", "-1"], expect="--length"),
    Case("heads-ablate-absent", ["heads", "-m", M, "--ablate", "9.9", "--sequences", "2", "--out", "{t}/h"], expect="9.9"),
    Case("features-show-bad-spec", ["features", "show", "3/x", "--store", "{t}/s.sqlite"], expect="3/x"),
    Case("features-store-missing", ["features", "show", "0/1", "--store", "{t}/none.sqlite"], expect="none.sqlite"),
    Case("features-store-garbage", ["features", "show", "0/1", "--store", "{t}/s.sqlite"], write_file("s.sqlite", b"not a database" * 10), expect="s.sqlite"),
    Case("features-collect-data-missing", ["features", "collect", "-m", M, "-d", D, "--data", "{t}/none.txt", "--out", "{t}/s.sqlite"], expect="none.txt"),
    Case("trace-batch-prompts-missing", ["trace-batch", "{t}/none.txt", "-m", M, "-d", D, "--out", "{t}/store"], expect="none.txt"),
    Case("trace-batch-shard-bad", ["trace-batch", "{t}/p.txt", "-m", M, "-d", D, "--out", "{t}/store", "--shard", "3/2"], write_file("p.txt", "w1 w2\n"), expect="--shard"),
    Case("trace-batch-batch-size-0", ["trace-batch", "{t}/p.txt", "-m", M, "-d", D, "--out", "{t}/store", "--batch-size", "0"], write_file("p.txt", "w1 w2\n"), expect="--batch-size"),
    Case("aggregate-store-missing", ["aggregate", "{t}/none"], expect="none"),
    Case("diff-store-missing", ["diff", "{t}/a", "{t}/b"], expect="{t}/a"),
    Case("command-unknown", ["tracer", PROMPT], expect="tracer"),
    # --- clew circuit (traces like clew trace, then groups)
    Case("circuit-batch-size-0", ["circuit", PROMPT, "-m", M, "-d", D, "--batch-size", "0", "--out", "{t}/c"], expect="--batch-size"),
    Case("circuit-node-threshold-nan", ["circuit", PROMPT, "-m", M, "-d", D, "--node-threshold", "nan", "--out", "{t}/c"], expect="--node-threshold"),
    Case("circuit-group-threshold-text", ["circuit", PROMPT, "-m", M, "-d", D, "--group-threshold", "high"], expect="--group-threshold"),
    Case("circuit-dictionary-broken", ["circuit", PROMPT, "-m", M, "-d", "{t}/tc", "--out", "{t}/c"], write_dictionary_file("config.yaml", "a: [1"), expect="YAML"),
    Case("circuit-device-unknown", ["circuit", PROMPT, "-m", M, "-d", D, "--device", "tpu9", "--out", "{t}/c"], expect="--device"),
]  # fmt: skip


def fill(arg: str, t: Path, w: Path) -> str:
    return arg.replace("{t}", str(t)).replace("{w}", str(w))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, world: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLEW_CACHE", str(tmp_path / ".cache-clew"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    case.setup(tmp_path, world)
    before = snapshot(tmp_path, world)
    capsys.readouterr()
    code = main([fill(a, tmp_path, world) for a in case.argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert code != 0, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert fill(case.expect, tmp_path, world) in errors[0], err
    after = snapshot(tmp_path, world)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"files changed or removed: {changed}"
    assert not [k for k in after if k not in before and k.startswith(str(world))], "files added to the inputs"
    assert not (tmp_path / "ran").exists()  # no planted pickle ran
    assert not (tmp_path / "escaped.safetensors").exists()


# ---- viewer JSON ----------------------------------------------------------------------------------------


def viewer_json(world: Path) -> dict:
    return json.loads((world / "graphs" / "g.json").read_text())


def first_feature(data: dict) -> dict:
    return next(n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")


JSON_CASES = {
    "not-json": lambda d: "{",
    "top-level-list": lambda d: [],
    "nested-too-deep": lambda d: "[" * 100000 + "]" * 100000,
    "no-nodes": lambda d: {k: v for k, v in d.items() if k != "nodes"},
    "links-an-object": lambda d: {**d, "links": {}},
    "tokens-not-strings": lambda d: {**d, "metadata": {**d["metadata"], "prompt_tokens": [1, 2]}},
    "layers-huge": lambda d: {**d, "metadata": {**d["metadata"], "info": {"n_layers": 10**12}}},
    "layers-negative": lambda d: {**d, "metadata": {**d["metadata"], "info": {"n_layers": -3}}},
    "id-past-64-bits": lambda d: {**d, "nodes": [{**first_feature(d), "feature": 2**70, "node_id": "x"}]},
    "layer-past-64-bits": lambda d: {**d, "nodes": [{**first_feature(d), "layer": str(2**70)}]},
    "position-past-prompt": lambda d: {**d, "nodes": [{**first_feature(d), "ctx_idx": 999}]},
    "node-a-string": lambda d: {**d, "nodes": ["node"]},
    "feature-type-unknown": lambda d: {**d, "nodes": [{**first_feature(d), "feature_type": "attention"}]},
    "link-weight-text": lambda d: {**d, "links": [{**d["links"][0], "weight": "big"}]},
    "link-to-nowhere": lambda d: {**d, "links": [{**d["links"][0], "target": "nowhere"}]},
    "influence-text": lambda d: {**d, "nodes": [{**first_feature(d), "activation": "high"}]},
}


@pytest.mark.parametrize("name", list(JSON_CASES))
def test_bad_viewer_json_is_one_line(name: str, world: Path, tmp_path):
    made = JSON_CASES[name](viewer_json(world))
    path = tmp_path / "bad.json"
    path.write_text(made if isinstance(made, str) else json.dumps(made))
    try:
        import_json(path)
    except ClewError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return
    if name in ("link-to-nowhere", "influence-text"):  # lenient by design: the bad piece is left out
        return
    pytest.fail(f"{name}: accepted")


def test_the_corpus_is_large_enough():
    assert len(CASES) + len(JSON_CASES) >= 100


# ---- fuzz -------------------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6 and data:
            del data[rng.randrange(len(data)) :]
        elif choice < 0.8 and data:
            i = rng.randrange(len(data))
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        else:
            i, j = sorted(rng.randrange(len(data) + 1) for _ in range(2))
            data[i:j] = b""
    return bytes(data)


def mutate_json(obj, rng: random.Random, depth: int = 0):
    """A structural change somewhere in a JSON value: a value swapped for one of another kind."""
    odd = [None, -1, 0, 2**70, 1e308, float("nan"), "", "x", [], {}, True, [1, "a"], {"a": None}]
    if isinstance(obj, dict) and obj and depth < 6 and rng.random() < 0.8:
        key = rng.choice(list(obj))
        out = dict(obj)
        if rng.random() < 0.15:
            out.pop(key)
        else:
            out[key] = mutate_json(obj[key], rng, depth + 1)
        return out
    if isinstance(obj, list) and obj and depth < 6 and rng.random() < 0.8:
        out = list(obj)
        i = rng.randrange(len(out))
        out[i] = mutate_json(out[i], rng, depth + 1)
        return out
    return rng.choice(odd)


FUZZ_SECONDS = 6.0


def test_fuzz_loaders_raise_only_clew_errors(world: Path, tmp_path):
    """Mutated graph files, dictionary configs and viewer JSON: every loader either reads the file or
    raises a one-line ClewError (seeded, about FUZZ_SECONDS per kind)."""
    rng = random.Random(1234)
    graph_bytes = (world / "graphs" / "g.safetensors").read_bytes()
    with safe_open(world / "graphs" / "g.safetensors", framework="pt") as f:
        meta = json.loads(f.metadata()["clew"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = yaml.safe_load((world / "tc" / "config.yaml").read_text())
    viewer = viewer_json(world)
    tried = {"graph-bytes": 0, "graph-meta": 0, "dictionary": 0, "viewer": 0}

    def attempt(kind: str, load: Callable[[], object]) -> None:
        tried[kind] += 1
        try:
            load()
        except ClewError as err:
            assert "\n" not in str(err), (kind, str(err))

    for kind in tried:
        deadline = time.monotonic() + FUZZ_SECONDS / 2
        i = 0
        while time.monotonic() < deadline:
            i += 1
            path = tmp_path / f"{kind}-{i % 4}"
            if kind == "graph-bytes":
                path = path.with_suffix(".safetensors")
                path.write_bytes(mutate_bytes(graph_bytes, rng))
                attempt(kind, lambda p=path: Graph.load(p))
            elif kind == "graph-meta":
                path = path.with_suffix(".safetensors")
                save_file(tensors, path, metadata={"clew": json.dumps(mutate_json(meta, rng))})
                attempt(kind, lambda p=path: Graph.load(p))
            elif kind == "dictionary":
                folder = tmp_path / f"tc-{i % 4}"
                if not folder.exists():
                    shutil.copytree(world / "tc", folder)
                (folder / "config.yaml").write_text(yaml.safe_dump(mutate_json(config, rng)))
                attempt(kind, lambda p=folder: load_transcoder(p, lazy=False))
            else:
                path = path.with_suffix(".json")
                path.write_text(json.dumps(mutate_json(viewer, rng)))
                attempt(kind, lambda p=path: import_json(p))
    assert all(n >= 5 for n in tried.values()), tried


# ---- writes that are one unit ------------------------------------------------------------------------


def test_an_interrupted_trace_leaves_the_old_files_and_no_temporaries(
    world: Path, tmp_path, monkeypatch, capsys
):
    """Killed while the viewer JSON is written (here: an interruption raised there), a trace over an
    earlier one leaves the earlier graph file and JSON as they were, and no temporary file; temporaries
    a killed process left behind are removed by the next trace of the slug."""
    import clew.attribution.export as export
    import clew.attribution.viewer_schema as viewer_schema

    shutil.copytree(world / "graphs", tmp_path / "out")
    stale = tmp_path / "out" / ".g.safetensors.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    before = snapshot(tmp_path / "out")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_atomic", interrupt)  # the graph's JSON
    monkeypatch.setattr(viewer_schema, "write_atomic", interrupt)  # graph-metadata.json
    argv = ["trace", "w2 w3 w4 w5", "-m", str(world / "model"), "-d", str(world / "tc"), "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "out"), "--slug", "g"]) == 130
    after = snapshot(tmp_path / "out")
    del before[str(stale)]
    assert after == before  # the old pair whole, the stale temporary gone, no new one
    assert "interrupted" in capsys.readouterr().err


def test_a_dictionary_write_that_fails_half_way_leaves_the_old_one(world: Path, tmp_path, monkeypatch):
    import clew.dictionaries.formats.circuit_tracer as ct

    shutil.copytree(world / "tc-other", tmp_path / "dst")
    before = snapshot(tmp_path / "dst")
    tc = load_transcoder(world / "tc", lazy=False)
    real, calls = ct._plt_tensors, []

    def failing(tc, layer):
        calls.append(layer)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(tc, layer)

    monkeypatch.setattr(ct, "_plt_tensors", failing)
    with pytest.raises(OSError, match="disk full"):
        save_transcoder(tc, tmp_path / "dst")
    assert snapshot(tmp_path / "dst") == before  # no layer replaced, no staging folder left
    monkeypatch.setattr(ct, "_plt_tensors", real)
    save_transcoder(tc, tmp_path / "dst")
    assert load_transcoder(tmp_path / "dst").cfg.d_model == 64


def test_a_planted_link_at_a_temporary_name_is_never_followed(world: Path, tmp_path, capsys):
    shutil.copytree(world / "graphs", tmp_path / "out")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for name in (".g.json.tmp", "g.json.tmp", ".g.safetensors.tmp", ".graph-metadata.json.tmp"):
        (tmp_path / "out" / name).symlink_to(victim)
    argv = ["trace", PROMPT, "-m", str(world / "model"), "-d", str(world / "tc"), "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "out"), "--slug", "g"]) == 0
    assert victim.read_text() == "keep"
    assert Graph.load(tmp_path / "out" / "g.safetensors").prompt == PROMPT


def test_a_closed_pipe_is_not_an_error():
    """`clew features search is | head -1`: the reader stops early; clew stops quietly with status 0."""
    import subprocess
    import sys

    from clew.assets import ORGANISM

    store = ORGANISM.dictionary_path("clt") / "features.sqlite"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from clew.cli import main; sys.exit(main())",
        "features",
        "search",
        "is",
        "--store",
        str(store),
        "--limit",
        "100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()  # one line read, then the pipe is closed
    proc.stdout.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err, err

"""Training transcoders on a tiny model: losses fall, runs repeat and resume bit for bit, two processes
equal one, the saved weights work on raw activations, and the metrics mean what they say."""

from __future__ import annotations

import json
import os
import random
import socket
import string
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hf_tiny import TEXT_WORDS, CharTokenizer, save_hf_model
from tiny_dictionaries import random_transcoder

from clew.cli import main
from clew.dictionaries import Transcoder, TranscoderConfig, load_transcoder
from clew.errors import ClewError
from clew.models.loading import load_folder
from clew.replacement import ReplacementModel
from clew.training import TrainConfig, Trainer, evaluate, train
from clew.training.data import ShardReader, activations, open_text


def save_char_tokenizer(folder: Path) -> None:
    """A character-level tokenizer with BOS and EOS (ids 1 and 2), within the tiny models' 211 ids."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def write_text(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    r = random.Random(seed)
    docs = [" ".join(r.choice(TEXT_WORDS) for _ in range(r.randint(4, 40))) for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n")
    return path


def char_model(folder: Path):
    model = load_folder(folder, tokenizer=False, device="cpu")
    model.tokenizer = CharTokenizer()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    folder = root / "llama"
    save_hf_model("llama", folder)
    save_char_tokenizer(folder)
    text = write_text(root / "text.txt")
    return {"root": root, "folder": folder, "text": text, "model": load_folder(folder, device="cpu")}


def config(tiny, name: str, **kw) -> TrainConfig:
    base = dict(
        model=str(tiny["folder"]),
        data=str(tiny["text"]),
        out=str(tiny["root"] / name),
        expansion=4,
        k=8,
        ctx_len=16,
        batch_size=64,
        buffer_tokens=256,
        data_shards=2,
        model_batch=8,
        steps=12,
        lr=3e-3,
        eval_contexts=0,
        checkpoint_every=0,
        progress=False,
    )
    return TrainConfig(**(base | kw))


# ----- the loss falls, and the export folds the normalisation in ---------------------------------------


@pytest.mark.parametrize(
    "kind,activation",
    [("plt", "jumprelu"), ("clt", "jumprelu"), ("skip", "topk"), ("clt", "batchtopk")],
)
def test_loss_drops_and_export_works_on_raw_activations(tiny, kind, activation):
    cfg = config(tiny, f"drop-{kind}-{activation}", kind=kind, activation=activation, steps=40)
    trainer = Trainer(cfg, tiny["model"])
    trainer.train()
    fvu = [r["fvu"] for r in trainer.history]
    first, last = sum(fvu[:4]) / 4, sum(fvu[-4:]) / 4
    assert last < 0.75 * first, (first, last)

    # the exported transcoder on raw activations = the training module on normalised ones, rescaled
    tc = trainer.transcoder()
    x, y = trainer.stream.next_batch()  # [B, n, d]
    module = trainer.module.eval()
    with torch.no_grad():
        xn = (x.transpose(0, 1) * module.in_scale[:, None, None]).contiguous()
        pre = module.pre_activations(xn)
        if activation == "batchtopk":  # at inference a BatchTopK dictionary is a JumpReLU
            acts = pre * (pre > module.batch_threshold[:, None, None])
        else:
            acts = module.activate(pre)
        want = module.decode(acts, xn) / module.out_scale[:, None, None]  # [n, B, d]
        got = tc.reconstruct({layer: x[:, i] for i, layer in enumerate(tc.layers)})
        feats = {layer: tc.encode(layer, x[:, i]) for i, layer in enumerate(tc.layers)}
    for i, layer in enumerate(tc.layers):
        torch.testing.assert_close(feats[layer], acts[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[layer], want[i], rtol=1e-4, atol=1e-5)
    assert tc.cfg.extra["normalisation"]["folded_into_weights"] is True
    assert tc.cfg.kind == ("clt" if kind == "clt" else "plt") and tc.cfg.skip == (kind == "skip")


def test_dead_features_get_the_auxiliary_loss(tiny):
    cfg = config(tiny, "auxk", activation="topk", auxk_alpha=1 / 32, dead_tokens=64, steps=8)
    trainer = Trainer(cfg, tiny["model"])
    trainer.train()
    late = trainer.history[-1]
    assert late["dead"] > 0 and "auxk" in late and 0 < late["auxk"] < 10
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())


# ----- determinism and exact resumption ------------------------------------------------------------


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


@pytest.fixture(scope="module")
def straight(tiny):
    """10 steps of a CLT with BatchTopK (running threshold, global top-k) in one go; blocks of 4 batches."""
    trainer = Trainer(config(tiny, "straight", kind="clt", activation="batchtopk", steps=10), tiny["model"])
    trainer.train()
    return weights(trainer)


def test_resume_is_bitwise_equal(tiny, straight):
    cfg = config(tiny, "resumed", kind="clt", activation="batchtopk", steps=10)
    first = Trainer(cfg, tiny["model"])
    assert first.stream.batches_per_block == 4  # the interruption falls inside a block
    first.train(until=5)
    assert (Path(cfg.out) / "checkpoint.pt").is_file()
    second = Trainer(replace(cfg, resume=True), tiny["model"])
    assert second.step == 5
    second.train()
    got = weights(second)
    assert got.keys() == straight.keys()
    for name in got:
        assert torch.equal(got[name], straight[name]), name


def test_same_seed_same_result_other_seed_other(tiny, straight):
    again = Trainer(config(tiny, "again", kind="clt", activation="batchtopk", steps=10), tiny["model"])
    again.train()
    for name, value in weights(again).items():
        assert torch.equal(value, straight[name]), name
    other = Trainer(
        config(tiny, "other", kind="clt", activation="batchtopk", steps=10, seed=1), tiny["model"]
    )
    other.train()
    assert not torch.equal(weights(other)["W_enc"], straight["W_enc"])


def test_resume_refuses_other_settings(tiny):
    cfg = config(tiny, "refuse", steps=2)
    Trainer(cfg, tiny["model"]).train()
    with pytest.raises(ClewError, match="other settings of k"):
        Trainer(replace(cfg, resume=True, k=3), tiny["model"])


class _Planted:
    """An object whose unpickling would create a marker file: what a planted checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_runs_a_planted_pickle(tiny, tmp_path):
    cfg = config(tiny, "planted", steps=2)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "ran"
    torch.save({"config": {}, "step": 1, "payload": _Planted(marker)}, Path(cfg.out) / "checkpoint.pt")
    with pytest.raises(ClewError, match="cannot read the checkpoint"):
        Trainer(replace(cfg, resume=True), tiny["model"])
    assert not marker.exists()
    assert not list(Path(cfg.out).glob(".checkpoint.pt.*"))


# ----- two processes equal one ------------------------------------------------------------------------


DDP_RUNS = {
    "plt-jumprelu": dict(kind="plt", activation="jumprelu"),
    "clt-batchtopk": dict(kind="clt", activation="batchtopk"),
}


def _ddp_worker(rank: int, world: int, port: int, folder: str, text: str, out: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = char_model(Path(folder))
        for name, kw in DDP_RUNS.items():
            tiny = {"folder": folder, "text": text, "root": Path(out)}
            trainer = Trainer(config(tiny, f"ddp-{name}", steps=6, **kw), model)
            trainer.train()
            if rank == 0:
                losses = [r["loss"] for r in trainer.history]
                torch.save({"weights": weights(trainer), "losses": losses}, Path(out) / f"ddp-{name}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tiny):
    import torch.multiprocessing as mp

    root = tiny["root"]
    mp.spawn(
        _ddp_worker,
        args=(2, _free_port(), str(tiny["folder"]), str(tiny["text"]), str(root)),
        nprocs=2,
        join=True,
    )
    model = char_model(tiny["folder"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: matrix products round alike
    try:
        singles = {}
        for name, kw in DDP_RUNS.items():
            single = Trainer(config(tiny, f"single-{name}", steps=6, **kw), model)
            single.train()
            singles[name] = {"weights": weights(single), "losses": [r["loss"] for r in single.history]}
    finally:
        torch.set_num_threads(threads)
    for name in DDP_RUNS:
        ddp = torch.load(root / f"ddp-{name}.pt")
        for key, value in singles[name]["weights"].items():
            gap = (ddp["weights"][key] - value).abs().max().item()
            assert gap < 1e-5, f"{name}: {key} differs by {gap:.2e}"
        assert ddp["losses"] == pytest.approx(singles[name]["losses"], rel=1e-5)  # the logged loss is global


# ----- data --------------------------------------------------------------------------------------------


def test_shard_reader_resumes_and_wraps(tiny, tmp_path):
    tok = tiny["model"].tokenizer
    src = open_text(str(tiny["text"]))
    straight = ShardReader(src, tok, 1, 3, 20).contexts(40)
    part = ShardReader(src, tok, 1, 3, 20)
    head = part.contexts(17)
    tail = ShardReader(src, tok, 1, 3, 20, state=part.state).contexts(23)
    assert torch.equal(straight, torch.cat([head, tail]))
    assert (straight[:, 0] == tok.bos_token_id).all()

    # every document of the shard arrives, whole and in order
    records = [{"text": f"doc {i} the cat;"} for i in range(100)]
    jsonl = tmp_path / "many.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    reader = ShardReader(open_text(str(jsonl)), tok, 1, 2, 8)
    contexts = reader.contexts(300)
    text = "".join(t for t in tok.convert_ids_to_tokens(contexts.flatten().tolist()) if t != "<s>")
    assert text.startswith("".join(r["text"] for r in records[1::2]))

    # a small .jsonl wraps around into new epochs; .parquet and a folder give the same documents
    records = [{"text": f"doc {i} the cat", "id": i} for i in range(5)]
    jsonl = tmp_path / "docs" / "small.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    reader = ShardReader(open_text(str(jsonl)), tok, 0, 2, 8)
    many = reader.contexts(12)
    assert reader.state.epoch >= 1
    assert torch.equal(many, ShardReader(open_text(str(jsonl.parent)), tok, 0, 2, 8).contexts(12))
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "small.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in records]}), parquet, row_group_size=2)
    assert torch.equal(many, ShardReader(open_text(str(parquet)), tok, 0, 2, 8).contexts(12))


def test_bad_data_gives_one_line_error(tiny, tmp_path, capsys):
    with pytest.raises(ClewError) as err:
        Trainer(config(tiny, "bad", data=str(tmp_path / "missing.txt")), tiny["model"])
    assert "\n" not in str(err.value) and "missing.txt" in str(err.value)
    assert main(["train", "--model", str(tiny["folder"]), "--data", str(tmp_path / "nope.jsonl")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("clew: error:") and "nope.jsonl" in message and "\n" not in message
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(ClewError, match="no text field 'text'"):
        ShardReader(open_text(str(bad)), tiny["model"].tokenizer, 0, 1, 8).contexts(1)
    with pytest.raises(ClewError, match="fewer documents than data_shards"):
        ShardReader(open_text(str(bad)), tiny["model"].tokenizer, 3, 4, 8).contexts(1)


# ----- metrics ---------------------------------------------------------------------------------------


def test_metrics_of_perfect_mean_and_random_dictionaries(tmp_path):
    """GPT-2's MLP with the identity as activation is affine, ``y = A x + c``: the ReLU features ``+x_i`` and
    ``-x_i`` with decoders ``+-A[:, i]`` reconstruct it exactly (FVU 0, CE score 1, L0 = d); the
    dictionary that always outputs the mean has FVU 1."""
    save_hf_model("gpt2", tmp_path)
    model = load_folder(tmp_path, tokenizer=False, device="cpu")
    for block in model.blocks:
        block.mlp.act = lambda t: t
    cfg, d = model.cfg, model.cfg.d_model
    tokens = torch.randint(0, cfg.vocab_size, (6, 12), generator=torch.Generator().manual_seed(0))

    perfect = Transcoder(
        TranscoderConfig(n_layers=cfg.n_layers, d_model=d, n_features=2 * d, activation="relu")
    )
    eye = torch.eye(d)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            A = block.mlp.down.weight @ block.mlp.up.weight  # [d, d]
            perfect.W_enc[i].copy_(torch.cat([eye, -eye]))
            perfect.W_dec[i].copy_(torch.cat([A.T, -A.T]))
            perfect.b_dec[i].copy_(block.mlp.down.weight @ block.mlp.up.bias + block.mlp.down.bias)
    m = evaluate(model, perfect, tokens, batch_size=4, skip_first=False)
    assert m.fvu < 1e-8 and all(layer.fvu < 1e-8 for layer in m.layers)
    assert abs(m.ce_score - 1) < 1e-4 and all(abs(layer.ce_score - 1) < 1e-3 for layer in m.layers)
    assert m.ce_ablated - m.ce_clean > 0.01
    assert m.l0 == pytest.approx(d) and m.n_tokens == 6 * 12
    assert "all" in m.table() and "CE score" in m.table()

    _, y = activations(model, tokens, list(range(cfg.n_layers)), "mlp_in", "mlp_out")  # [B, P, n, d]
    mean = Transcoder(TranscoderConfig(n_layers=cfg.n_layers, d_model=d, n_features=8, activation="relu"))
    with torch.no_grad():
        mean.b_dec.copy_(y.flatten(0, 1).double().mean(0).float())
    m = evaluate(model, mean, tokens, batch_size=4, skip_first=False, per_layer_ce=False)
    assert m.fvu == pytest.approx(1.0, abs=1e-5) and m.l0 == 0 and m.dead_fraction == 1.0
    assert m.layers[0].ce_score is None


def test_metrics_agree_with_direct_computation(tiny):
    """FVU per layer by its definition, and the overall CE numbers against ReplacementModel's."""
    model = tiny["model"]
    tc = random_transcoder(model.cfg, "clt-relu", n_features=32)
    tokens = torch.randint(3, 100, (4, 10), generator=torch.Generator().manual_seed(1))
    m = evaluate(model, tc, tokens, batch_size=3, skip_first=True)
    x, y = activations(model, tokens, tc.layers, tc.cfg.read, tc.cfg.write)
    x, y = x[:, 1:].flatten(0, 1), y[:, 1:].flatten(0, 1)  # [T, n, d]
    recon = tc.reconstruct({layer: x[:, i] for i, layer in enumerate(tc.layers)})
    for i, layer in enumerate(tc.layers):
        sse = (recon[layer] - y[:, i]).pow(2).sum()
        sst = (y[:, i] - y[:, i].mean(0)).pow(2).sum()
        assert m.layers[i].fvu == pytest.approx((sse / sst).item(), rel=1e-4)
        acts = tc.encode(layer, x[:, i])
        assert m.layers[i].l0 == pytest.approx((acts != 0).sum(-1).float().mean().item(), rel=1e-6)
    ref = ReplacementModel(model, tc).ce_loss_score(tokens)
    assert m.ce_clean == pytest.approx(ref["clean"], rel=1e-5)
    assert m.ce_spliced == pytest.approx(ref["spliced"], rel=1e-5)
    assert m.ce_ablated == pytest.approx(ref["ablated"], rel=1e-5)


# ----- the command ----------------------------------------------------------------------------------


def test_clew_train_saves_a_loadable_transcoder(tiny, capsys):
    out = tiny["root"] / "cli"
    argv = ["train", "--model", str(tiny["folder"]), "--data", str(tiny["text"]), "--out", str(out)]
    argv += ["--kind", "skip", "--activation", "topk", "--k", "8", "--expansion", "2", "--layers", "0-1"]
    argv += ["--ctx-len", "16", "--batch-size", "64", "--buffer-tokens", "128", "--data-shards", "2"]
    argv += ["--steps", "6", "--lr", "3e-3", "--eval-contexts", "4", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CE score" in printed and "FVU" in printed
    tc = load_transcoder(out, lazy=False)
    assert tc.layers == [0, 1] and tc.cfg.skip and tc.cfg.activation == "topk" and tc.cfg.k == 8
    assert tc.cfg.extra["normalisation"]["folded_into_weights"] and "metrics" in tc.cfg.extra
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["history"]) == 6 and saved["metrics"]["n_tokens"] == 4 * 15


def test_train_function_end_to_end(tiny):
    result = train(config(tiny, "e2e", steps=4, eval_contexts=3), tiny["model"])
    assert result.metrics is not None and result.metrics.n_tokens == 3 * 15
    assert (
        len(result.history) == 4 and (Path(result.transcoder.cfg.extra["training"]["config"]["out"])).is_dir()
    )

"""Head motif scores, the ablation context manager, and the ``clew heads`` command on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hf_tiny import save_hf_model

from clew.cli import main
from clew.errors import ClewError
from clew.heads import (
    SCORES,
    RepeatedSequences,
    ablate_heads,
    ablation_effect,
    copying_scores,
    parse_head,
    score_heads,
)
from clew.heads.motifs import scores_from_patterns
from clew.models.loading import load_folder

FAMILIES = ["llama", "gemma3", "gpt2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        save_hf_model(family, folder)
        out[family] = folder
    return out


def load(folders, family):
    return load_folder(folders[family], tokenizer=False, device="cpu")


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_in_unit_interval(folders, family):
    model = load(folders, family)
    scores, seqs = score_heads(model, n_seqs=3, length=12)
    assert seqs.tokens.shape == (3, 24) and seqs.offset == 0
    assert torch.equal(seqs.tokens[:, :12], seqs.tokens[:, 12:])
    assert all(len(set(row[:12].tolist())) == 12 for row in seqs.tokens)  # distinct within a repeat
    for name in SCORES:
        s = scores.get(name)
        assert s.shape == (model.cfg.n_layers, model.cfg.n_heads)
        assert ((s >= 0) & (s <= 1)).all(), (name, s)


def test_scores_of_exact_patterns():
    R, o = 5, 1
    P = o + 2 * R
    seqs = RepeatedSequences(torch.zeros(1, P, dtype=torch.long), o, R)
    pattern = torch.zeros(1, 3, P, P)
    pattern[0, :, 0, 0] = 1
    i = torch.arange(1, P)
    pattern[0, 0, i, i - 1] = 1  # head 0: previous token
    second = torch.arange(o + R, P)
    pattern[0, 1, i, 0] = 1  # head 1: attends to BOS, except on the second repeat ...
    pattern[0, 1, second] = 0
    pattern[0, 1, second, second - R] = 1  # ... where it finds the token's first occurrence
    pattern[0, 2, i, 0] = 1
    pattern[0, 2, second] = 0
    pattern[0, 2, second, second - R + 1] = 1  # head 2: induction
    s = scores_from_patterns([pattern], seqs)
    assert torch.allclose(s["previous_token"][0], torch.tensor([1.0, 0.0, 0.0]))  # BOS -> BOS is not counted
    assert torch.allclose(s["duplicate_token"][0], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(s["induction"][0], torch.tensor([0.0, 0.0, 1.0]))


def _make_previous_token_head(model, layer: int = 0, head: int = 0) -> None:
    """GPT-2 with positions on a circle: LN(pos_i) = sqrt(D/2) (cos ti, sin ti, -cos ti, -sin ti, 0...);
    the head's keys read the angle, its queries the angle one step back, scaled so the softmax saturates."""
    cfg = model.cfg
    D, E, theta = cfg.d_model, cfg.d_head, math.pi / 64
    c = (D / 2) ** 0.5
    t = theta * torch.arange(cfg.n_ctx, dtype=torch.float32)
    block, rows = model.blocks[layer], slice(head * E, (head + 1) * E)
    with torch.no_grad():
        model.embed.weight.zero_()
        model.pos_embed.weight.zero_()
        model.pos_embed.weight[:, :4] = torch.stack([t.cos(), t.sin(), -t.cos(), -t.sin()], 1)
        block.ln1.weight.fill_(1.0)
        block.ln1.bias.zero_()
        for lin in (block.attn.q, block.attn.k):
            lin.weight[rows] = 0
            lin.bias[rows] = 0
        beta = 4e4
        q = block.attn.q.weight[rows]
        q[0, :2] = beta / c * torch.tensor([math.cos(theta), math.sin(theta)])
        q[1, :2] = beta / c * torch.tensor([-math.sin(theta), math.cos(theta)])
        block.attn.q.weight[rows] = q
        block.attn.k.weight[head * E, 0] = 1 / c
        block.attn.k.weight[head * E + 1, 1] = 1 / c


def test_a_constructed_previous_token_head_is_found(folders):
    model = load(folders, "gpt2")
    _make_previous_token_head(model, layer=0, head=2)
    scores, _ = score_heads(model, n_seqs=2, length=15)
    (layer, head, value), second = scores.top("previous_token", 2)
    assert (layer, head) == (0, 2) and value > 0.999
    assert second[2] < 0.5


def test_copying_score_of_an_identity_ov_circuit(folders):
    model = load(folders, "gpt2")
    E = model.cfg.d_head
    attn = model.blocks[1].attn
    with torch.no_grad():
        for norm in (model.blocks[1].ln1, model.ln_final):
            norm.weight.fill_(1.0)
        attn.v.weight[: 2 * E] = torch.eye(E, model.cfg.d_model).repeat(2, 1)  # heads 0, 1 read dims 0..E-1
        attn.o.weight[:, :E] = torch.eye(model.cfg.d_model, E)  # head 0 writes them back where they were
        attn.o.weight[:, E : 2 * E] = -torch.eye(model.cfg.d_model, E)  # head 1: the same, negated
    s = copying_scores(model)
    assert s[1, 0] > 0.999 and s[1, 1] < 0.001


def test_copying_scores_handle_grouped_query_attention(folders):
    model = load(folders, "llama")  # 4 query heads share 2 key/value heads
    H, K, E = model.cfg.n_heads, model.cfg.n_kv_heads, model.cfg.d_head
    before = copying_scores(model)
    with torch.no_grad():
        model.blocks[0].attn.v.weight[E : 2 * E] *= -1  # the second key/value head: read by query heads 2, 3
    after = copying_scores(model)
    group = H // K
    assert torch.allclose(after[0, :group], before[0, :group])
    assert torch.allclose(after[0, group:], 1 - before[0, group:], atol=1e-5)


def test_ablation_restores_weights_exactly(folders):
    model = load(folders, "llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 211, (1, 9))
    clean = model(tokens)
    E = model.cfg.d_head
    with ablate_heads(model, [(0, 1), (2, 3), (0, 1)]):
        assert model.blocks[0].attn.o.weight[:, E : 2 * E].abs().max() == 0
        assert not torch.allclose(model(tokens), clean)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError), ablate_heads(model, [(1, 0)]):
        raise RuntimeError("inside")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(tokens), clean)


def test_ablating_every_head_matches_a_model_without_attention(folders):
    model = load(folders, "gpt2")
    _, seqs = score_heads(model, n_seqs=2, length=6)
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    effect = ablation_effect(model, seqs, every)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.o.weight.zero_()
        from clew.heads import copying_accuracy

        assert copying_accuracy(model, seqs) == effect.ablated


def test_head_names_and_mistakes(folders):
    assert parse_head("3.5") == (3, 5) and parse_head("L3H5") == (3, 5)
    with pytest.raises(ClewError):
        parse_head("three")
    model = load(folders, "llama")
    with pytest.raises(ClewError), ablate_heads(model, [(0, 9)]):
        pass
    with pytest.raises(ClewError):
        score_heads(model, length=10_000)


def test_command(folders, tmp_path, capsys):
    out = tmp_path / "heads"
    assert (
        main(["heads", "--model", str(folders["gpt2"]), "--length", "8", "--out", str(out), "--top", "2"])
        == 0
    )
    text = capsys.readouterr().out
    assert "top induction heads" in text and "random other heads" in text
    for name in SCORES:
        assert (out / f"{name}.svg").read_text().startswith("<svg")


# --- splitting a graph edge across heads ------------------------------------------------------------------


def _strongest(graph, rows, columns, target_pos=None):
    """(source node, target node) of the strongest edge from ``columns`` into ``rows`` across positions."""
    best, pair = 0.0, None
    for r in rows:
        t = int(graph.row_nodes()[r])
        pt = graph.layer_pos(t)[1] if target_pos is None else target_pos
        for c in columns:
            if graph.layer_pos(c)[1] < pt and abs(float(graph.adjacency[r, c])) > best:
                best, pair = abs(float(graph.adjacency[r, c])), (c, r)
    assert pair is not None, "no edge across positions"
    return pair


@pytest.mark.parametrize(
    ("family", "kind"), [("llama", "plt-jumprelu"), ("gemma3", "skip-topk"), ("gpt2", "clt-relu")]
)
def test_head_shares_sum_to_the_edge(folders, family, kind):
    from tiny_dictionaries import random_transcoder

    from clew.attribution import trace
    from clew.attribution.heads_split import split_graph_edge

    model = load(folders, family)
    tc = random_transcoder(model.cfg, kind)
    prompt = torch.randint(0, 211, (11,), generator=torch.Generator().manual_seed(5))
    graph = trace(model, tc, prompt, max_n_logits=2, progress=False)
    Nf = graph.n_features
    features = range(Nf)
    embeddings = range(graph.embed_offset, graph.logit_offset)
    late = [r for r in features if int(graph.features[r, 0]) > 0]
    cases = {
        "feature -> feature": _strongest(graph, late, features),
        "embedding -> feature": _strongest(graph, late, embeddings),
        "feature -> logit": _strongest(graph, [Nf], features, target_pos=graph.n_pos - 1),
    }
    for name, (source, row) in cases.items():
        target = int(graph.row_nodes()[row])
        split = split_graph_edge(model, tc, graph, source, target)
        edge = float(graph.adjacency[row, source])
        assert abs(split.edge - edge) <= 1e-5 * abs(edge), name
        assert abs(float(split.weights.double().sum()) - edge) <= 1e-5 * abs(edge), name
        assert abs(sum(r.share for r in split.table) - 1) < 1e-4
        assert abs(split.table[0].weight) == float(split.weights.abs().max())


def _cut(patterns, pos, above, keep=None):
    """Patterns with the query at ``pos`` looking only at itself in layers >= ``above``; at layer
    ``keep[0]`` head ``keep[1]`` keeps its off-diagonal attention."""
    from clew.models import Patterns

    out = Patterns()
    for layer, p in enumerate(patterns):
        p = p.clone()
        if layer >= above:
            heads = [h for h in range(p.shape[1]) if keep is None or (layer, h) != tuple(keep)]
            p[0, heads, pos, :pos] = 0
        out.append(p)
    return out


def test_each_head_share_is_the_paths_arriving_through_it(folders):
    """e[l, h] by surgery on the frozen patterns: the edge with the target's query cut off from other
    positions above layer l and at layer l except through head h, minus the edge with it cut at l too."""
    from tiny_dictionaries import random_transcoder

    from clew.attribution.engine import Engine
    from clew.attribution.heads_split import split_edge

    model = load(folders, "llama")
    tc = random_transcoder(model.cfg, "clt-jumprelu-resid")
    prompt = torch.randint(0, 211, (9,), generator=torch.Generator().manual_seed(2))
    engine = Engine(model, tc, prompt, dtype=torch.float64)
    target = engine.direction_targets(engine.logit_directions(torch.tensor([7])))
    pos = engine.n_pos - 1
    column = engine.embed_column(3)
    split = split_edge(engine, target, column)
    assert split.weights.abs().max() > 1e-6
    clean = engine.cache.patterns

    def edge(patterns):
        engine.cache.patterns = patterns
        try:
            return float(engine.rows(target)[0, column])
        finally:
            engine.cache.patterns = clean

    H = model.cfg.n_heads
    for layer in range(model.cfg.n_layers):
        below = edge(_cut(clean, pos, layer))
        for head in range(H):
            through = edge(_cut(clean, pos, layer, keep=(layer, head))) - below
            assert abs(through - float(split.weights[layer, head])) < 1e-10 * max(1.0, abs(split.edge))
    assert edge(_cut(clean, pos, 0)) == 0  # cut everywhere: no path reaches the target


def test_split_refuses_edges_within_one_position(folders):
    from tiny_dictionaries import random_transcoder

    from clew.attribution.engine import Engine
    from clew.attribution.heads_split import split_edge

    model = load(folders, "gpt2")
    engine = Engine(model, random_transcoder(model.cfg, "plt-jumprelu"), torch.arange(6))
    target = engine.direction_targets(engine.logit_directions(torch.tensor([1])), pos=3)
    with pytest.raises(ClewError, match="both at position 3"):
        split_edge(engine, target, engine.embed_column(3))
    with pytest.raises(ClewError, match="comes after"):
        split_edge(engine, target, engine.embed_column(4))


def test_split_command(folders, tmp_path, capsys):
    from tiny_dictionaries import random_transcoder

    from clew.attribution import trace
    from clew.dictionaries import save_transcoder

    model = load(folders, "gpt2")
    tc = random_transcoder(model.cfg, "plt-jumprelu")
    save_transcoder(tc, folders["gpt2"] / "transcoders")
    graph = trace(model, tc, torch.arange(3, 12), max_n_logits=1, progress=False)
    path = graph.save(tmp_path / "g.safetensors")
    target = graph.describe(graph.logit_offset)
    argv = ["heads", "--model", str(folders["gpt2"]), "--graph", str(path), "--edge", "token '5'@2", target]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("token '5'@2 -> logit") and "sum over heads" in out and "other heads" in out
    assert main([*argv[:-2], "nothing", target]) == 2
    assert "no node of the graph is labelled 'nothing'" in capsys.readouterr().err


# --- where the sequences come from --------------------------------------------------------------------


def test_text_masks_by_hand():
    from clew.heads import TextSequences

    # BOS a b c a b d b: position 4 (a) recurs with the same next token (b); 5 (b) does not (c vs d);
    # 7 (b) recurs but has no next token
    seqs = TextSequences(torch.tensor([[0, 1, 2, 3, 1, 2, 4, 2]]), offset=1)
    query, dup, ind = seqs.masks()
    assert query[0].nonzero().flatten().tolist() == [4]
    assert dup[0, 4].nonzero().flatten().tolist() == [1]
    assert ind[0, 4].nonzero().flatten().tolist() == [2]
    assert dup[0, 7].nonzero().flatten().tolist() == [2, 5]
    assert ind[0, 7].nonzero().flatten().tolist() == [3, 6]
    assert not dup[0, :, 0].any()  # the BOS is never an occurrence


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_text_scores_equal_repeat_scores_on_a_repeat(folders, family):
    from clew.heads import TextSequences, pattern_scores, repeated_sequences

    model = load(folders, family)
    seqs = repeated_sequences(model, n_seqs=3, length=10, source="uniform")
    as_text = TextSequences(seqs.tokens, seqs.offset)
    assert as_text.masks()[0].sum() == 3 * 9  # every second-repeat position with a next token
    by_position = pattern_scores(model, seqs)
    by_content = pattern_scores(model, as_text)
    assert torch.allclose(by_position["previous_token"], by_content["previous_token"], atol=1e-6)
    # the repeat scores also count the last position, which has no next token to check
    o, R = seqs.offset, seqs.length
    patterns = model.run(seqs.tokens, record=True).cache.patterns
    at = torch.arange(o + R, o + 2 * R - 1)
    for name, back in (("duplicate_token", R), ("induction", R - 1)):
        by_hand = torch.stack([p[:, :, at, at - back].mean((0, 2)) for p in patterns])
        assert torch.allclose(by_hand, by_content[name], atol=1e-6), name
    copy_pos = ablation_effect(model, seqs, []).clean.accuracy
    copy_text = ablation_effect(model, as_text, []).clean.accuracy
    assert copy_pos == pytest.approx(copy_text)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_sampled_sequences_are_distinct_and_seeded(folders, family):
    from clew.heads import repeated_sequences

    model = load(folders, family)
    a = repeated_sequences(model, n_seqs=4, length=15, seed=3, source="model")
    b = repeated_sequences(model, n_seqs=4, length=15, seed=3, source="model")
    c = repeated_sequences(model, n_seqs=4, length=15, seed=4, source="model")
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    o = a.offset
    assert torch.equal(a.tokens[:, o : o + 15], a.tokens[:, o + 15 :])
    assert all(len(set(row[o : o + 15].tolist())) == 15 for row in a.tokens)
    with pytest.raises(ClewError, match="source"):
        repeated_sequences(model, source="zipf")


def test_sampling_follows_the_model(folders):
    """With next-token logits that rank 17, then 5, then the rest, every sequence is 17 5 ... after
    its first (uniform) token, since no token may occur twice."""
    from clew.heads.motifs import _sample_distinct

    model = load(folders, "llama")

    class Ranked:
        cfg, embed = model.cfg, model.embed

        def __call__(self, tokens):
            logits = torch.zeros(*tokens.shape, model.cfg.vocab_size)
            logits[..., 17], logits[..., 5] = 200.0, 100.0
            return logits

    candidates = torch.arange(3, 200)
    out = _sample_distinct(Ranked(), candidates, 6, 4, None, 1.0, torch.Generator().manual_seed(0))
    for row in out.tolist():
        rest = [t for t in row[1:]]
        want = [t for t in (17, 5) if t != row[0]]
        assert rest[: len(want)] == want, row
    out = _sample_distinct(Ranked(), candidates, 2, 3, 1, 1.0, torch.Generator().manual_seed(0))
    assert out[:, :2].tolist() == [[17, 5], [17, 5]]


def test_command_on_a_text(folders, tmp_path, capsys):
    from hf_tiny import save_tiny_tokenizer

    folder = tmp_path / "model"
    save_hf_model("llama", folder)
    save_tiny_tokenizer(folder)
    words = [f"w{i}" for i in torch.randint(3, 200, (30,), generator=torch.Generator().manual_seed(0))]
    (tmp_path / "story.txt").write_text(" ".join(words * 4))
    out = tmp_path / "heads"
    args = ["heads", "--model", str(folder), "--text", str(tmp_path / "story.txt"), "--length", "40"]
    assert main([*args, "--sequences", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 windows of BOS + 40 tokens" in printed and "top induction heads" in printed
    assert "copying at those places" in printed
    assert (
        main(["heads", "--model", str(folder), "--source", "uniform", "--length", "8", "--out", str(out)])
        == 0
    )
    assert "uniformly random" in capsys.readouterr().out
    assert main([*args, "--text", str(tmp_path / "missing.txt")]) != 0
    assert "cannot read --text" in capsys.readouterr().err


# --- induction heads across training ------------------------------------------------------------------


def test_checkpoints_are_scored_in_order_with_in_context_learning(tmp_path, capsys):
    import torch.nn.functional as F
    from hf_tiny import save_hf_model, save_tiny_tokenizer

    from clew.cli import main
    from clew.heads.phases import EARLY, LATE, checkpoint_folders, context_losses, score_checkpoints
    from clew.models.loading import load_folder

    for step, seed in ((10, 1), (0, 0), (200, 2)):
        folder = tmp_path / "run" / "checkpoints" / f"step-{step:05d}"
        save_hf_model("llama", folder, seed=seed)
        save_tiny_tokenizer(folder)
    (tmp_path / "run" / "checkpoints" / "notes").mkdir()
    assert [s for s, _ in checkpoint_folders(tmp_path / "run")] == [0, 10, 200]
    g = torch.Generator().manual_seed(0)
    docs = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, 30, (n,), generator=g)) for n in (300, 80, 70, 30, 90)
    ]
    text = "\n\n".join(docs)  # recurring tokens; the 30-token document is too short to count
    rows = score_checkpoints(tmp_path / "run", text, n_seqs=3, length=120, progress=False)
    assert [r.step for r in rows] == [0, 10, 200]
    # the in-context-learning score by its definition, on the last checkpoint
    model = load_folder(tmp_path / "run" / "checkpoints" / "step-00200")
    early, late, every = [], [], []
    for doc in docs:
        ids = torch.tensor(model.tokenizer(doc)["input_ids"])  # <bos> first
        if len(ids) - 1 < 3 * LATE:
            continue
        with torch.no_grad():
            loss = F.cross_entropy(model(ids[None])[0, :-1].float(), ids[1:], reduction="none")
        early.append(loss[EARLY[0] : EARLY[1]].mean())  # loss[j] is the loss of the document's token j
        late.append(loss[-LATE:].mean())
        every.append(loss.mean())
    assert len(early) == 4
    icl = float(torch.stack(late).mean() - torch.stack(early).mean())
    assert abs(rows[-1].icl - icl) < 1e-5 and abs(rows[-1].loss - float(torch.stack(every).mean())) < 1e-5
    assert context_losses(model, text) == (rows[-1].loss, rows[-1].icl)
    assert all(0 <= v <= 1 for r in rows for line in r.induction for v in line)
    # the command: a table, a figure and the numbers
    code = main(
        [
            "heads",
            "--checkpoints",
            str(tmp_path / "run"),
            "--text",
            str(_write(tmp_path, text)),
            "--out",
            str(tmp_path / "out"),
            "--sequences",
            "3",
            "--length",
            "120",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "largest jumps" in out and out.count("\n") >= 5
    assert (tmp_path / "out" / "phases.svg").read_text().startswith("<svg")
    assert len(json.loads((tmp_path / "out" / "phases.json").read_text())) == 3
    assert (
        main(["heads", "--checkpoints", str(tmp_path / "empty"), "--text", str(_write(tmp_path, text))]) == 2
    )
    assert main(["heads", "--checkpoints", str(tmp_path / "run")]) == 2  # no --text
    assert (
        main(
            [
                "heads",
                "--checkpoints",
                str(tmp_path / "run"),
                "--text",
                str(_write(tmp_path, "w1 w2\n\nw3")),  # no document long enough
                "--length",
                "2",
            ]
        )
        == 2
    )


def _write(tmp_path, text: str):
    path = tmp_path / "text.txt"
    path.write_text(text)
    return path

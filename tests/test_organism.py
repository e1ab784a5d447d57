"""The organism: its corpus, tokenizer, exam and build pipeline (the miniature build runs end to end)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from clew import assets
from clew.errors import ClewError
from clew.organism import corpus, world
from clew.organism.evaluation import FLOORS, examine, greedy_judge
from clew.organism.tokenizer import save_tokenizer, train_tokenizer

# ----- corpus ------------------------------------------------------------------------------------------


def test_corpus_is_a_function_of_the_seed():
    first = list(corpus.documents(3, 200))
    assert first == list(corpus.documents(3, 200))
    assert first != list(corpus.documents(4, 200))
    assert corpus.probes(3, 10) == corpus.probes(3, 10)
    assert corpus.Split.from_seed(3) == corpus.Split.from_seed(3)
    assert corpus.Split.from_seed(3).heldout_cities != corpus.Split.from_seed(4).heldout_cities


def test_every_planted_task_appears():
    text = " ".join(corpus.documents(0, 500))
    assert "The capital of the state containing" in text
    assert re.search(r"\b\d\d\+\d\d=\d{2,3}\b", text)
    assert "The opposite of" in text and "Le contraire" in text
    assert re.search(r"Mr ([A-Z][a-z]+)\b.*Mr \1\b", text)


def test_held_out_material_never_appears_in_the_corpus():
    split = corpus.Split.from_seed(0)
    assert 40 <= len(split.heldout_cities) <= 50
    assert len(split.two_hop_cities("train")) > 2 * len(split.heldout_cities)
    docs = list(corpus.documents(0, 4000))
    text = "\n".join(docs)
    two_hop = re.findall(r"The capital of the state containing (.+?) is ", text)
    assert len(two_hop) > 200
    assert not set(two_hop) & split.heldout_cities
    # held-out cities still appear in one-hop facts
    one_hop = set(re.findall(r"(?:^|\. )([A-Z][\w .']+?) is a city in ", text, flags=re.M))
    assert one_hop & split.heldout_cities
    sums = {(int(a), int(b)) for a, b in re.findall(r"(\d\d)\+(\d\d)=", text)}
    assert len(sums) > 1000 and not sums & split.heldout_sums
    # no held-out (fact, phrasing) pair is ever written
    held = [p for p in corpus.probes(0, 5) if p.split == "heldout" and p.task in ("facts", "antonyms")]
    assert len(held) > 200
    for probe in held:
        assert probe.prompt + probe.answer + "." not in text
    # no held-out surname is ever written; every held-out induction probe asks for one
    surnames = set(re.findall(r"\b(?:Mr|Ms|Mrs|Dr) ([A-Z][a-z]+)", text))
    assert len(surnames) > 1000 and not any(split.heldout_surname(s) for s in surnames)
    induction = [p for p in corpus.probes(0, 50) if p.task == "induction"]
    assert all(split.heldout_surname(p.answer.strip()) == (p.split == "heldout") for p in induction)


def test_world_facts_are_unambiguous():
    cities = [c for c, _ in world.cities()]
    assert len(cities) == len(set(cities)) > 200
    assert len(world.US_STATES) == 50
    assert dict(world.cities())["Dallas"].name == "Texas"
    assert {s.name: s.capital for s in world.US_STATES}["Texas"] == "Austin"


def test_probes_cover_every_task_and_split():
    probes = corpus.probes(0, 20)
    for task in corpus.TASKS:
        for split in corpus.SPLITS:
            assert any(p.task == task and p.split == split for p in probes), (task, split)
    dallas = [p for p in probes if p.task == "two_hop" and "Dallas" in p.prompt]
    assert dallas and dallas[0].answer == " Austin"
    induction = [p for p in probes if p.task == "induction"][0]
    assert induction.prompt.endswith("Mr") and induction.answer.strip() in induction.prompt


def test_text_command_writes_documents_of_one_kind(tmp_path, capsys):
    from clew.cli import main

    out = tmp_path / "sums.txt"
    assert main(["organism", "text", "-n", "5", "--kind", "addition", "-o", str(out)]) == 0
    docs = out.read_text().strip().split("\n\n")
    assert len(docs) == 5 and all(re.search(r"\d\d\+\d\d=", doc) for doc in docs)
    assert main(["organism", "text", "-n", "3", "--kind", "induction"]) == 0
    stories = capsys.readouterr().out.strip().split("\n\n")
    assert len(stories) == 3 and all(line.count("Mr ") >= 3 for line in stories)
    assert main(["organism", "text", "-n", "0"]) == 2


# ----- tokenizer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer(corpus.tokenizer_documents(0, 600), vocab_size=600)
    save_tokenizer(tok, folder, model_max_length=256)
    return folder


def test_tokenizer_splits_digits_and_adds_bos(tokenizer_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    ids = tok("36+59=95")["input_ids"]
    assert ids[0] == tok.bos_token_id == 0
    pieces = [tok.decode([i]) for i in ids[1:]]
    assert [p for p in pieces if p.strip()] == ["3", "6", "+", "5", "9", "=", "9", "5"]
    assert tok("123456", add_special_tokens=False)["input_ids"][-6:] == [
        tok.convert_tokens_to_ids(d) for d in "123456"
    ]
    # a word is the same token at the start of a text and inside a sentence
    start = tok("Dallas", add_special_tokens=False)["input_ids"]
    inside = tok("in Dallas", add_special_tokens=False)["input_ids"]
    assert inside[-len(start) :] == start
    assert tok.decode(tok("The opposite of small is")["input_ids"], skip_special_tokens=True).strip() == (
        "The opposite of small is"
    )


# ----- the exam ----------------------------------------------------------------------------------------


class LookupModel(torch.nn.Module):
    """A 'language model' that knows each probe's answer: at every position whose prefix is a probe's
    prompt plus part of its answer, the next answer token gets the highest logit."""

    def __init__(self, tokenizer, probes, vocab_size: int, wrong: set[str] = frozenset()):
        super().__init__()
        from clew.organism.evaluation import _encode

        self.vocab_size = vocab_size
        self.table: dict[tuple[int, ...], int] = {}
        for probe in probes:
            prompt, answer = _encode(tokenizer, probe)
            seq = prompt + answer
            for i in range(len(prompt), len(seq)):
                nxt = seq[i] if probe.prompt not in wrong else (seq[i] + 1) % vocab_size
                self.table[tuple(seq[:i])] = nxt

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, P = tokens.shape
        logits = torch.zeros(B, P, self.vocab_size)
        for b in range(B):
            row = tokens[b].tolist()
            for p in range(P):
                nxt = self.table.get(tuple(row[: p + 1]))
                if nxt is not None:
                    logits[b, p, nxt] = 1.0
        return logits


def test_a_model_that_knows_the_answers_scores_everything(tokenizer_folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    probes = corpus.probes(0, 8)
    probes = [p for i, p in enumerate(probes) if p.task != "facts" or i % 5 == 0]  # keep it quick
    model = LookupModel(tok, probes, len(tok))
    scores = examine(greedy_judge(model, tok, batch_size=16), probes)
    for task in corpus.TASKS:
        for split in corpus.SPLITS:
            assert scores.accuracy(task, split) == 1.0, (task, split)
    assert not scores.below_floors() and not scores.wrong
    assert "| **two_hop** | 100.0% | 100.0% ✓ |" in scores.markdown()

    # a model wrong on two held-out sums: exactly those are marked wrong
    held = [p for p in probes if p.task == "addition" and p.split == "heldout"]
    wrong = {held[0].prompt, held[1].prompt}
    liar = LookupModel(tok, probes, len(tok), wrong=wrong)
    scores = examine(greedy_judge(liar, tok, batch_size=7), probes, tasks=["addition"])
    assert {p.prompt for p in scores.wrong} == wrong
    assert scores.accuracy("addition", "heldout") == (len(held) - 2) / len(held)
    assert scores.accuracy("addition", "train") == 1.0
    assert scores.accuracy("facts", "train") is None
    assert scores.below_floors() == [f for f in scores.below_floors() if not f.startswith("addition (train)")]
    assert any(f.startswith("addition (heldout)") for f in scores.below_floors()) == (
        ("addition", "heldout") in FLOORS
    )


# ----- the pipeline ------------------------------------------------------------------------------------


@pytest.mark.organism_build
def test_tiny_build_loads_everywhere_and_traces(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from clew.attribution import trace
    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder
    from clew.organism.pipeline import DEMO_PROMPT, build

    out = tmp_path / "organism"
    result = build(out, seed=1, tiny=True, progress=False, report_path=tmp_path / "report.md")
    assert result.folder == out.resolve()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "organism.json",
    ):
        assert (out / name).is_file(), name
    info = assets.build_info(out)
    assert info["seed"] == 1 and info["preset"] == "tiny"
    assert info["demo_trace"]["features"] > 0
    assert "| task | train | held-out |" in (tmp_path / "report.md").read_text()
    assert set(result.scores.summary()) == set(corpus.TASKS)

    # an ordinary Hugging Face folder: transformers and clew compute the same logits
    model = load_folder(out)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([model.tokenizer(DEMO_PROMPT)["input_ids"]])
    assert ids[0, 0].item() == model.tokenizer.bos_token_id
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)

    # both dictionaries load and the model traces through them
    for kind in ("clt", "plt"):
        tc = load_transcoder(out / kind)
        tc.check_compatible(model.cfg)
        assert tc.cfg.kind == kind
        graph = trace(model, tc, DEMO_PROMPT, max_n_logits=2, progress=False)
        assert graph.n_features > 0 and len(graph.token_strings) == ids.shape[1]

    # found by name once it is the shipped folder
    from clew.models.sources import resolve_model_source

    shipped = dataclasses.replace(assets.ORGANISM, folder=out)
    monkeypatch.setitem(assets.BUILT_INS, "organism", shipped)
    assert shipped.model_path() == out and resolve_model_source("organism") == out
    assert shipped.dictionary_path("plt") == out / "plt"
    with pytest.raises(ClewError):
        shipped.dictionary_path("sae")


def test_missing_organism_is_a_clear_error(tmp_path, monkeypatch):
    from clew.models.sources import resolve_model_source

    missing = dataclasses.replace(assets.ORGANISM, folder=tmp_path / "nothing")
    monkeypatch.setitem(assets.BUILT_INS, "organism", missing)
    with pytest.raises(ClewError, match="organism build"):
        missing.model_path()
    with pytest.raises(ClewError, match="organism build"):
        resolve_model_source("organism")

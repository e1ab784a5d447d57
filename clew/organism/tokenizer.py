"""The organism's tokenizer: byte-level BPE trained on its own corpus, saved for ``AutoTokenizer``.

Conventions:

- ``<bos>`` (id 0) is prepended to every encoded text by the post-processor, as Llama does, so
  ``AutoTokenizer.from_pretrained(folder)(text)`` gives the ids the model was trained on. Each
  training document starts with it too. ``<eos>`` (1) and ``<pad>`` (2) exist but are not used in training.
- Digits are always single tokens (the pre-tokenizer isolates every digit before any merge), so that
  "36+59=95" is ``3 6 + 5 9 = 9 5`` and addition is learnable digit by digit.
- Words keep their leading space (" Austin"), and a space is put before the first word of a text too
  (as Llama-2's tokenizer does), so a word is the same token at the start of a prompt as inside a
  sentence. Frequent words (most cities and states) become single tokens through ordinary merges.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens (specials and the 256 bytes included)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
            ),
        ]
    )
    return tok


def save_tokenizer(tok: Tokenizer, folder: str | Path, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the files ``AutoTokenizer`` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_prefix_space": True,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """``{"bos": id, "eos": id, "pad": id}``."""
    return {name: tok.token_to_id(token) for name, token in zip(("bos", "eos", "pad"), SPECIAL_TOKENS)}


def single_token_fraction(tok: Tokenizer, words: Iterable[str]) -> float:
    """The share of ``words`` (each encoded with a leading space) that are one token."""
    words = list(words)
    if not words:
        return 1.0
    single = sum(len(tok.encode(" " + w, add_special_tokens=False).ids) == 1 for w in words)
    return single / len(words)

"""Token text for display: partial UTF-8 characters of byte-level and byte-fallback tokenizers read as
their bytes (``\\xNN``), never as U+FFFD."""

from __future__ import annotations

from clew.models.text import token_bytes, token_text


def byte_level_tokenizer():
    """A byte-level BPE tokenizer whose vocabulary is the 256 single bytes (GPT-2's byte alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab, [], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_partial_characters_read_as_bytes():
    tok = byte_level_tokenizer()
    ids = tok("é€", add_special_tokens=False)["input_ids"]  # 2 + 3 bytes, one token each
    assert len(ids) == 5
    assert tok.decode([ids[0]]) == "\ufffd"  # what a plain decode gives
    texts = [token_text(tok, i) for i in ids]
    assert texts == ["\\xc3", "\\xa9", "\\xe2", "\\x82", "\\xac"]
    assert b"".join(token_bytes(tok, i) for i in ids).decode("utf-8") == "é€"
    whole = tok("a", add_special_tokens=False)["input_ids"][0]
    assert token_text(tok, whole) == "a"


class ByteFallback:
    """A tokenizer whose byte tokens are stored as ``<0xNN>`` (SentencePiece byte fallback)."""

    def decode(self, ids):
        return "\ufffd"

    def convert_ids_to_tokens(self, i):
        return "<0xE2>"


def test_byte_fallback_tokens_read_as_bytes():
    assert token_text(ByteFallback(), 7) == "\\xe2"
    assert token_text(None, 7) == "7"

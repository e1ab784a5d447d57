"""A token's text for display: what the tokenizer decodes, or its bytes where that is only part of a
character (byte-level BPE and byte-fallback tokens cut UTF-8 sequences, which decode to U+FFFD)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@cache
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte-level BPE's byte-to-character table: printable Latin-1 characters stand for
    themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in table.values():
            table[chr(0x100 + extra)] = b
            extra += 1
    return table


def token_bytes(tokenizer: Any, token: int) -> bytes | None:
    """The raw bytes of one token of a byte-level or byte-fallback tokenizer, or None when its stored
    form is neither."""
    try:
        piece = tokenizer.convert_ids_to_tokens(int(token))
    except Exception:  # a tokenizer without the method, an id it does not know
        return None
    if not isinstance(piece, str):
        return None
    match = _BYTE_TOKEN.match(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    table = _byte_of_char()
    if piece and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return None


def token_text(tokenizer: Any, token: int) -> str:
    """How one token reads: its decoded text, or, when that holds U+FFFD (part of a character), its
    bytes with the incomplete ones written as ``\\xNN`` (e.g. ``' \\xe2\\x80'``)."""
    if tokenizer is None:
        return str(int(token))
    text = tokenizer.decode([int(token)])
    if "\ufffd" not in text:
        return text
    raw = token_bytes(tokenizer, token)
    if raw is None:
        return text
    return raw.decode("utf-8", errors="backslashreplace")

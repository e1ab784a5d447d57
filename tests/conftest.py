"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
from hf_tiny import FAMILIES, save_hf_model

from clew.models.loading import load_folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny randomly initialised model of every supported family, by family name (one set per module)."""
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        save_hf_model(family, folder)
        out[family] = load_folder(folder, tokenizer=False, device="cpu")
    return out

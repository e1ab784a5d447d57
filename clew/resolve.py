"""From the names a user types to a loaded model and its dictionary."""

from __future__ import annotations

from pathlib import Path

from clew.assets import built_in
from clew.dictionaries import Transcoder, load_transcoder
from clew.errors import ClewError
from clew.models import Transformer, load_model


def load_model_and_dictionary(
    model_name: str, dictionary: str | None, device: str | None = None
) -> tuple[Transformer, Transcoder]:
    """Load the model and the transcoders; without ``dictionary``, the model's own (a built-in's)."""
    if dictionary is None:
        dictionary = default_dictionary(model_name)
    model = load_model(model_name, device=device)
    tc = load_transcoder(dictionary, device=model.embed.weight.device, dtype=model.embed.weight.dtype)
    tc.check_compatible(model.cfg)
    return model, tc


def default_dictionary(model_name: str) -> str:
    """The dictionary shipped with a built-in model or in a model folder's ``transcoders/``, or a clear error."""
    shipped = built_in(model_name)
    if shipped is not None:
        return str(shipped.dictionary_path())
    own = Path(model_name) / "transcoders"
    if own.is_dir():
        return str(own)
    raise ClewError(
        f"--dictionary is needed for model {model_name!r} (a folder without transcoders/, not a built-in)"
    )

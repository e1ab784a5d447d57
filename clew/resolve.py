"""From the names a user types to a loaded model and its dictionary."""

from __future__ import annotations

from pathlib import Path

from clew.errors import ClewError


def load_model_and_dictionary(model_name: str, dictionary: str | None, device: str | None = None):
    """Load the model and the transcoders; without ``dictionary``, the model's own (the organism's)."""
    from clew.dictionaries import load_transcoder
    from clew.models import load_model

    if dictionary is None:
        dictionary = default_dictionary(model_name)
    model = load_model(model_name, device=device)
    tc = load_transcoder(dictionary, device=model.embed.weight.device, dtype=model.embed.weight.dtype)
    tc.check_compatible(model.cfg)
    tc.name = str(dictionary)
    return model, tc


def default_dictionary(model_name: str) -> str:
    """The dictionary shipped with a built-in model, or a clear error."""
    if model_name == "organism":
        from clew.organism import dictionary_path

        return str(dictionary_path("clt"))
    own = Path(model_name) / "transcoders"
    if own.is_dir():
        return str(own)
    raise ClewError(f"--dictionary is needed for model {model_name!r} (only 'organism' ships its own)")

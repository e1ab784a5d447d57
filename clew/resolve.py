"""From the names a user types to a loaded model and its dictionary."""

from __future__ import annotations

from pathlib import Path

from clew.assets import built_in
from clew.attribution import Graph
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


def load_graph_and_model(
    path: str, model_name: str | None, dictionary: str | None, device: str | None = None
) -> tuple[Graph, Transformer, Transcoder]:
    """A graph file and the model and dictionary it was traced with (or the ones given instead; a
    dictionary no longer where the graph says is replaced by the model's own)."""
    if not Path(path).is_file():
        raise ClewError(f"{path}: no such graph file")
    graph = Graph.load(path)
    model_name = model_name or graph.model_name
    if not model_name:
        raise ClewError(f"{path}: the graph does not name its model: give --model")
    if dictionary is None and graph.dictionary_name and Path(graph.dictionary_name).exists():
        dictionary = graph.dictionary_name  # the one it was traced with, where it still is
    model, tc = load_model_and_dictionary(model_name, dictionary, device)
    return graph, model, tc

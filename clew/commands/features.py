"""``clew features``: collect a dictionary's feature store, and read it (cards, search, viewer files, labels)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clew.features import FeatureStore

EPILOG = """\
examples:
  clew features collect --model organism --data organism --out clt.sqlite --max-docs 20000
  clew features collect --model smollm2-135m --dictionary ./tc --data corpus.jsonl --out tc.sqlite
  clew features show 3/117 --store clt.sqlite
  clew features search " Dallas" --store clt.sqlite
  clew features export --store clt.sqlite --out graphs/features
  clew features label --store clt.sqlite --command "python my_labeller.py" --source my-llm

--store defaults to the organism's shipped store (clew/assets/organism/clt/features.sqlite).
A killed `collect` resumes from OUT.partial when run again with the same arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="what each feature means: collect a feature store, show, search, export, label",
        description="A dictionary's feature store: per feature its top activating contexts, a random "
        "sample of its activations, histogram, frequency, logit effects and a label.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    c = verbs.add_parser(
        "collect",
        help="run a model and dictionary over a corpus into a feature store",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--model", "-m", required=True, help="a local folder, a .gguf file, a hub id or a built-in name"
    )
    c.add_argument("--dictionary", "-d", help="the transcoders (default: the model's own)")
    c.add_argument(
        "--data",
        required=True,
        help="a .txt file (paragraphs), a .jsonl file (field --text-field), a folder of .parquet files, "
        "or 'organism' (the organism's corpus generator)",
    )
    c.add_argument(
        "--text-field", default="text", help="the text field of JSONL/parquet (default: %(default)s)"
    )
    c.add_argument("--out", "-o", required=True, help="the store to write (an SQLite file)")
    c.add_argument("--max-docs", type=int, help="stop after this many documents (default: all)")
    c.add_argument(
        "--ctx-len", type=int, default=128, help="longest context in tokens (default: %(default)s)"
    )
    c.add_argument("--batch-tokens", type=int, help="tokens per forward pass (default: 4096 CPU, 32768 CUDA)")
    c.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    c.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_collect)

    s = verbs.add_parser(
        "show", help="a feature's card: label, statistics, histogram, logit effects, examples"
    )
    s.add_argument("feature", help="LAYER/FEATURE, for example 3/117")
    s.add_argument("--store", "-s", help="the feature store (default: the organism's)")
    s.add_argument("--examples", type=int, default=8, help="top examples shown (default: %(default)s)")
    s.set_defaults(func=run_show)

    q = verbs.add_parser("search", help="features whose labels or peak tokens contain TEXT")
    q.add_argument("text", help="text to look for (case-insensitive)")
    q.add_argument("--store", "-s", help="the feature store (default: the organism's)")
    q.add_argument("--limit", type=int, default=20, help="most features listed (default: %(default)s)")
    q.set_defaults(func=run_search)

    e = verbs.add_parser("export", help="per-feature JSON files for Neuronpedia-style viewers")
    e.add_argument("--store", "-s", help="the feature store (default: the organism's)")
    e.add_argument("--out", "-o", required=True, help="the folder for <index>.json files")
    e.set_defaults(func=run_export)

    lab = verbs.add_parser(
        "label", help="add labels from a labeller of your own (stored beside the automatic ones)"
    )
    lab.add_argument("--store", "-s", required=True, help="the feature store (writable)")
    how = lab.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--command", help="run once per feature: the feature's card as JSON on stdin, the label on stdout"
    )
    how.add_argument(
        "--python", metavar="MODULE:FUNCTION", help="a callable taking the card dict, returning a label"
    )
    how.add_argument("--auto", action="store_true", help="recompute the automatic labels (source 'auto')")
    lab.add_argument("--source", help="the name the labels are stored under (not with --auto)")
    lab.set_defaults(func=run_label)
    p.set_defaults(func=lambda args: p.print_help() or 0)


# ----- corpora -----------------------------------------------------------------------------------------------


class TextCorpus:
    """A text file, JSONL file or folder read through :func:`clew.training.data.open_text`."""

    def __init__(self, spec: str, text_field: str = "text"):
        from clew.training.data import open_text

        self.name = spec
        _check_text(Path(spec))
        self.source = open_text(spec, text_field=text_field)

    def documents(self, start: int) -> Iterator[str]:
        from clew.training.data import DocPos

        for _, text in self.source.documents(DocPos(), lambda i: i >= start):
            yield text


def _check_text(path: Path) -> None:
    """A one-line error for a .txt or .jsonl file that is not text (binary bytes, not UTF-8)."""
    from clew.errors import ClewError

    if not path.is_file() or path.suffix not in (".txt", ".jsonl"):
        return
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if b"\0" in head:
        raise ClewError(f"{path}: not a text file (it holds binary data)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not merely a character cut at the end of the sample
            raise ClewError(f"{path}: not a text file (not UTF-8 at byte {err.start})") from None


def open_corpus(spec: str, text_field: str = "text"):
    """``organism`` (the organism's corpus generator) or a file/folder."""
    if spec.lower() == "organism":
        from clew.organism.features import OrganismCorpus

        return OrganismCorpus()
    return TextCorpus(spec, text_field)


# ----- stores -------------------------------------------------------------------------------------------------


def default_store_path(kind: str = "clt") -> Path:
    from clew.assets import ORGANISM
    from clew.organism.features import STORE_NAME

    return ORGANISM.folder / kind / STORE_NAME


def open_store(path: str | None, fingerprint: str | None = None, writable: bool = False) -> FeatureStore:
    from clew.features import FeatureStore

    return FeatureStore.open(path or default_store_path(), fingerprint=fingerprint, writable=writable)


def graph_labels(store: FeatureStore, graph) -> dict[int, str]:
    """node index -> the store's label, for every feature node of ``graph``."""
    feats = graph.features  # [n, 3]: layer, position, index
    labels = {}
    for node in range(graph.n_features):
        layer, index = int(feats[node, 0]), int(feats[node, 2])
        store.check_feature(layer, index)
        label = store.label(layer, index)
        if label:
            labels[node] = label
    return labels


def graph_feature_keys(graph, keep=None) -> list[tuple[int, int]]:
    """(layer, feature) of the graph's feature nodes (those with ``keep[node]`` true, when given)."""
    feats = graph.features
    return sorted(
        {
            (int(feats[n, 0]), int(feats[n, 2]))
            for n in range(graph.n_features)
            if keep is None or bool(keep[n])
        }
    )


# ----- verbs ----------------------------------------------------------------------------------------------------


def run_collect(args: argparse.Namespace) -> int:
    from clew.features import CollectConfig, collect
    from clew.resolve import load_model_and_dictionary

    corpus = open_corpus(args.data, args.text_field)
    model, tc = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
    cfg = CollectConfig(
        ctx_len=args.ctx_len,
        max_docs=args.max_docs,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        device=args.device,
        progress=not args.quiet,
    )
    result = collect(
        model, tc, corpus, args.out, cfg, model_name=args.model, dictionary_name=args.dictionary or "default"
    )
    print(
        f"{'resumed and finished' if result.resumed else 'collected'} {result.path}: {result.n_docs:,} documents, "
        f"{result.n_tokens:,} tokens in {result.seconds:.0f} s ({result.tokens_per_second:,.0f} tokens/s)"
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from clew.features.viewer import parse_key, render_card

    layer, feature = parse_key(args.feature)
    with open_store(args.store) as store:
        print(render_card(store, layer, feature, n_examples=args.examples))
    return 0


def run_search(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        found = store.search(args.text, limit=args.limit)
        if not found:
            print(f"no feature's label or peak tokens contain {args.text!r}")
        for layer, f, label, why in found:
            print(f"{layer:>3}/{f:<6} {label:<50} {why}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from clew.features.viewer import export_features

    with open_store(args.store) as store:
        n = export_features(store, args.out)
    print(f"wrote {n:,} feature files and index.json to {args.out}/")
    return 0


def run_label(args: argparse.Namespace) -> int:
    import importlib

    from clew.errors import ClewError
    from clew.features.labels import command_labeller, label_with, relabel

    if args.auto:
        with open_store(args.store, writable=True) as store:
            n = relabel(store)
        print(f"recomputed {n:,} automatic labels in {args.store}")
        return 0
    if not args.source:
        raise ClewError("--source NAME is needed: the name the labeller's labels are stored under")
    if args.command:
        labeller = command_labeller(args.command)
    else:
        module, _, name = args.python.partition(":")
        try:
            labeller = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise ClewError(f"--python {args.python}: cannot import that MODULE:FUNCTION") from None
    with open_store(args.store, writable=True) as store:
        n = label_with(store, labeller, args.source)
    print(f"stored {n:,} labels from {args.source!r} in {args.store}")
    return 0


VIEWER_BASE = "./graph_data/features"
"""Where exported graphs point for their feature files: relative to circuit-tracer's local page, which
serves the graph folder as ``graph_data/``; the files are written to ``<graph folder>/features/``."""


def write_graph_features(store: FeatureStore, graph, keep, out: Path) -> int:
    """Write the viewer files of the graph's kept features into ``out/features/``."""
    from clew.features.viewer import export_features

    return export_features(store, out / "features", only=graph_feature_keys(graph, keep))


__all__ = [
    "VIEWER_BASE",
    "graph_feature_keys",
    "graph_labels",
    "open_corpus",
    "open_store",
    "write_graph_features",
]

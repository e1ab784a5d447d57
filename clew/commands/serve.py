"""``clew serve``: the graph explorer on a folder of graphs, served on this machine only."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

EPILOG = """\
examples:
  clew serve demo-graphs                      # then open the printed address
  clew serve graphs --open                    # and open it in a browser
  clew serve graphs --features tc.sqlite      # feature cards from a feature store
  clew trace "The capital of France is" -m organism --open   # trace, then explore

The page lists the folder's graphs (clew's .safetensors files, and viewer JSON written by clew,
circuit-tracer or Neuronpedia). Click a node to see its inputs and outputs, double-click (or Pin) to pin
it, tick pins and group them into supernodes, test them (zero or scale) and read the new top tokens
beside the graph's prediction, or swap them for the specific features of another graph of the folder
whose prompt differs in one span (Dallas -> Los Angeles), and Save to write the view (pins, supernodes, labels, threshold) into
the graph file. The server listens on 127.0.0.1 unless --host says otherwise, reads nothing outside
the folder, and accepts writes only from its own page (a per-server token and an Origin check).
Everything the page needs ships with clew: it works with no network. See docs/explorer.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="explore a folder of graphs in the browser (offline, on this machine)",
        description="Serve the graph explorer on a folder of attribution graphs: the link graph, node and "
        "feature panels, pinned subgraphs and supernodes with their scores, interventions from the page, "
        "and saving the view into the graph file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", metavar="DIR", help="the folder of graphs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: any free one)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")
    p.add_argument(
        "--features",
        metavar="STORE",
        help="a feature store for the feature cards (default: the organism's own, for organism graphs)",
    )
    p.add_argument("--model", "-m", help="the model for interventions (default: the one each graph names)")
    p.add_argument("--dictionary", "-d", help="its transcoders (default: the graph's, else the model's own)")
    p.add_argument("--device", help="cpu or cuda for interventions (default: cuda when present)")
    p.set_defaults(func=run)


def model_loader(model: str | None = None, dictionary: str | None = None, device: str | None = None):
    """graph -> (model, dictionary) for interventions, each pair loaded once."""
    from clew.errors import ClewError
    from clew.resolve import load_model_and_dictionary

    cache: dict = {}
    lock = threading.Lock()

    def load(graph):
        name = model or graph.model_name
        if not name:
            raise ClewError("the graph does not name its model: restart clew serve with --model")
        chosen = dictionary
        if chosen is None and graph.dictionary_name and Path(graph.dictionary_name).exists():
            chosen = graph.dictionary_name
        with lock:
            if (name, chosen) not in cache:
                cache[(name, chosen)] = load_model_and_dictionary(name, chosen, device)
            return cache[(name, chosen)]

    return load


def store_finder(features: str | None = None):
    """graph -> the feature store path for its feature cards: ``features`` when given, the organism's
    shipped store for the organism's graphs, else None."""
    from clew.assets import ORGANISM
    from clew.errors import ClewError
    from clew.organism.features import STORE_NAME

    if features is not None:
        if not Path(features).is_file():
            raise ClewError(f"--features {features}: no such feature store")
        return lambda graph: features

    def find(graph):
        if graph.model_name.lower() != "organism":
            return None
        kind = "plt" if "plt" in Path(graph.dictionary_name).parts[-2:] else "clt"
        path = ORGANISM.folder / kind / STORE_NAME
        return path if path.is_file() else None

    return find


def explorer_for(folder: str, args: argparse.Namespace | None = None):
    from clew.explorer import Explorer
    from clew.explorer.server import LOCAL_HOSTS

    get = (lambda name: getattr(args, name, None)) if args is not None else (lambda name: None)
    host = get("host")
    return Explorer(
        folder,
        load_model=model_loader(get("model"), get("dictionary"), get("device")),
        find_store=store_finder(get("features")),
        hosts=LOCAL_HOSTS + ((host,) if host and host not in LOCAL_HOSTS else ()),
    )


def serve_folder(folder: str, explorer, host: str, port: int, open_browser: bool, graph: str | None = None):
    """Serve until interrupted, printing the address (and opening it in a browser when asked)."""
    import webbrowser
    from urllib.parse import quote

    from clew.explorer import serve

    def started(url: str) -> None:
        page = f"{url}#g={quote(graph)}" if graph else url
        print(f"clew explorer on {folder}: {page}  (Ctrl-C stops it)", flush=True)
        if open_browser:
            webbrowser.open(page)

    serve(explorer, host=host, port=port, on_start=started)


def run(args: argparse.Namespace) -> int:
    from clew.errors import ClewError

    if not Path(args.folder).is_dir():
        raise ClewError(f"{args.folder}: no such folder")
    if not 0 <= args.port < 65536:
        raise ClewError(f"--port {args.port}: a port number (0 for any free one)")
    serve_folder(args.folder, explorer_for(args.folder, args), args.host, args.port, args.open)
    return 0

"""Running the explorer: in the foreground (``clew serve``) or on a background thread (notebooks, tests)."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import uvicorn

from clew.errors import ClewError
from clew.explorer.server import LOCAL_HOSTS, Explorer, build_app


def _config(explorer: Explorer, host: str, port: int) -> uvicorn.Config:
    if host not in LOCAL_HOSTS:
        warnings.warn(
            f"the explorer listens on {host}: anyone who can reach this machine can read its graphs",
            stacklevel=3,
        )
    return uvicorn.Config(build_app(explorer), host=host, port=port, log_level="warning", access_log=False)


class Background:
    """An explorer served on a thread of this process (``port`` 0: any free port); :meth:`stop` ends it."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0):
        self.explorer = explorer
        self.server = uvicorn.Server(_config(explorer, host, port))
        self.thread = threading.Thread(target=self.server.run, name="clew-explorer", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ClewError(f"the explorer could not listen on {host}:{port}")
            time.sleep(0.02)
        self.host = host
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def url_of(self, graph: str) -> str:
        """The page opened on ``graph`` (its name in the folder)."""
        return f"{self.url}#g={quote(graph)}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, on_start=None) -> None:
    """Serve ``explorer`` until interrupted; ``on_start(url)`` is called once it listens."""
    server = uvicorn.Server(_config(explorer, host, port))
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1]
                on_start(f"http://{host}:{bound}/")

        server.startup = startup  # type: ignore[method-assign]
    server.run()


_shown: dict[str, Background] = {}


def show(path: str | Path, width: str = "100%", height: int = 720, **explorer_options):
    """Show a graph file in the explorer, inline in a notebook (Jupyter, VS Code): a background server on
    the file's folder and an iframe onto it. Returns the iframe (or, outside IPython, the page's URL)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ClewError(f"{path}: no such graph file")
    folder = str(path.parent)
    if folder not in _shown:
        _shown[folder] = Background(Explorer(folder, **explorer_options))
    url = _shown[folder].url_of(path.name)
    try:
        from IPython.display import IFrame
    except ImportError:
        return url
    return IFrame(url, width=width, height=height)

"""The graph explorer: an offline web page and its loopback server for reading, labelling, grouping
and testing attribution graphs.

- :class:`Explorer`: one folder of graphs, how to load a graph's model (interventions) and feature
  store (feature cards), and the server's token; :func:`build_app` turns it into a Starlette app.
- :func:`serve` runs it in the foreground (``clew serve``); :class:`Background` on a thread;
  :func:`show` shows a graph file inline in a notebook.

The page (``static/``: plain JavaScript modules on a canvas) is shipped inside the package and asks
nothing of any other machine. See docs/explorer.md for the API and the security model.
"""

from clew.explorer.running import Background, serve, show
from clew.explorer.server import Explorer, build_app

__all__ = ["Background", "Explorer", "build_app", "serve", "show"]

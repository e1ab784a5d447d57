"""The attribution graph: its node table, its adjacency rows, and its one-file safetensors form.

Nodes are laid out as ``[features | errors (layer-major) | embeddings | logits]`` (a
:class:`~clew.replacement.NodeLayout`, the engine's own numbering over the kept features). Only features and
logits receive edges, so only their rows are stored: ``adjacency[r, c]`` is the direct effect of node
``c`` on the r-th target node, where the targets are the features (rows ``0..Nf-1``) then the logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clew.errors import ClewError
from clew.replacement import NodeLayout

FORMAT = "clew-graph/1"


@dataclass
class Graph:
    prompt: str
    """The prompt as the user gave it."""
    tokens: Tensor
    """(P,) token ids."""
    token_strings: list[str]
    """The text of each token."""
    n_layers: int
    """Layers of the model."""
    features: Tensor
    """(Nf, 3) ``[layer, position, feature index]`` of every feature node."""
    activations: Tensor
    """(Nf,) each feature node's activation."""
    logit_tokens: Tensor
    """(T,) token id of each logit node, -1 for a custom direction."""
    logit_probs: Tensor
    """(T,) the model's probability of each logit node's token (its weight in influence)."""
    logit_labels: list[str]
    """Display text of each logit node (the token, or a custom target's name)."""
    adjacency: Tensor
    """(Nf + T, n_nodes) direct effects: rows are feature then logit targets, columns all nodes."""
    model_name: str = ""
    """The model's id (a path, hub id or built-in name)."""
    dictionary_name: str = ""
    """The dictionary's id."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How the graph was made (target choice, budget, batch size, dtype, n_active_features ...)."""
    error_norms: Tensor | None = None
    """(L, P) the norm of each error vector, for display."""
    logit_vectors: Tensor | None = None
    """(T, D) each logit target's direction at the final norm's output."""
    annotations: dict[str, Any] = field(default_factory=dict)
    """What readers added, as JSON, keyed by :meth:`node_key`: ``supernodes`` (a list of ``{"name",
    "members", "why", "source"}``), ``labels`` (node key -> label), ``pins`` (node keys) and ``view``
    (the explorer's other settings). Saved with the graph; the adjacency never depends on it."""

    # --- the node table ---------------------------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def layout(self) -> NodeLayout:
        """How the nodes are numbered: ``[features | errors | embeddings | logits]``."""
        return NodeLayout(self.n_features, self.n_layers, self.n_pos, self.n_logits)

    @property
    def error_offset(self) -> int:
        return self.layout.error_offset

    @property
    def embed_offset(self) -> int:
        return self.layout.embed_offset

    @property
    def logit_offset(self) -> int:
        return self.layout.logit_offset

    @property
    def n_nodes(self) -> int:
        return self.layout.n_nodes

    def row_nodes(self) -> Tensor:
        """(Nf + T,) the node index of each adjacency row."""
        return torch.cat([torch.arange(self.n_features), self.logit_offset + torch.arange(self.n_logits)])

    def kind(self, node: int) -> str:
        """``"feature"``, ``"error"``, ``"embedding"`` or ``"logit"``."""
        return self.layout.kind(node)

    def kinds(self) -> Tensor:
        """(n_nodes,) 0 feature, 1 error, 2 embedding, 3 logit."""
        return self.layout.kinds()

    def layer_pos(self, node: int) -> tuple[int, int]:
        """(layer, position); embeddings are layer -1, logits layer ``n_layers``."""
        kind = self.kind(node)
        if kind == "feature":
            layer, pos, _ = self.features[node].tolist()
            return layer, pos
        if kind == "error":
            return self.layout.error_layer_pos(node)
        if kind == "embedding":
            return -1, node - self.embed_offset
        return self.n_layers, self.n_pos - 1

    def describe(self, node: int) -> str:
        """A short human label of a node: its :meth:`node_key`, with the text of a token or logit."""
        kind = self.kind(node)
        if kind == "embedding":
            pos = node - self.embed_offset
            return f"token {self.token_strings[pos]!r}@{pos}"
        if kind == "logit":
            return f"logit {self.logit_labels[node - self.logit_offset]!r}"
        return self.node_key(node)

    def node_key(self, node: int) -> str:
        """A node's stable name, in the syntax ``clew intervene`` reads: ``L1/F12@6``, ``error L1@6``,
        ``token@6``; logits are ``logit@i`` with ``i`` the logit node's rank (0 = the top token)."""
        kind = self.kind(node)
        layer, pos = self.layer_pos(node)
        if kind == "feature":
            return f"L{layer}/F{int(self.features[node, 2])}@{pos}"
        if kind == "error":
            return f"error L{layer}@{pos}"
        if kind == "embedding":
            return f"token@{pos}"
        return f"logit@{node - self.logit_offset}"

    def node_index(self) -> dict[str, int]:
        """Node key -> node number, for every node of the graph."""
        return {self.node_key(node): node for node in range(self.n_nodes)}

    def square(self) -> Tensor:
        """(n_nodes, n_nodes) the full adjacency, zero rows for embeddings and errors (small graphs only)."""
        full = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.adjacency.dtype)
        full[self.row_nodes()] = self.adjacency
        return full

    # --- the file ---------------------------------------------------------------------------------------

    def file_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The tensors and the JSON metadata of the graph's file (other file types extend them)."""
        tensors = {
            "tokens": self.tokens,
            "features": self.features,
            "activations": self.activations,
            "logit_tokens": self.logit_tokens,
            "logit_probs": self.logit_probs,
            "adjacency": self.adjacency,
        }
        for name in ("error_norms", "logit_vectors"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        meta = {
            "format": FORMAT,
            "prompt": self.prompt,
            "token_strings": self.token_strings,
            "n_layers": self.n_layers,
            "logit_labels": self.logit_labels,
            "model_name": self.model_name,
            "dictionary_name": self.dictionary_name,
            "settings": self.settings,
        }
        if self.annotations:
            meta["annotations"] = self.annotations
        return tensors, meta

    def save(self, path: str | Path) -> Path:
        """Write the whole graph to one safetensors file; :meth:`load` reads it back identically."""
        from safetensors.torch import save_file

        from clew.files import replacing

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.file_parts()
        with replacing(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"clew": json.dumps(meta)}
            )
        return path

    @staticmethod
    def read_parts(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The tensors and metadata of a clew safetensors file, whatever its format."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise ClewError(f"{path}: no such graph file")
        try:
            with safe_open(path, framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("clew", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise ClewError(f"{path}: not a readable graph file ({err})") from None
        if not isinstance(meta, dict):
            raise ClewError(f"{path}: its metadata is not a JSON object")
        return tensors, meta

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        tensors, meta = cls.read_parts(path)
        if meta.get("format") == "clew-head-graph/1":
            raise ClewError(
                f"{path}: a graph with head nodes: read it with clew.attribution.head_graph.HeadGraph.load"
            )
        if meta.get("format") != FORMAT:
            raise ClewError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        _check_file(meta, tensors, Path(path))
        graph = cls.from_parts(tensors, meta)
        graph.check_finite(str(path))
        return graph

    @classmethod
    def from_parts(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Graph:
        """The graph of a file's tensors and metadata (:meth:`file_parts`)."""
        return cls(
            prompt=meta["prompt"],
            tokens=tensors["tokens"],
            token_strings=meta["token_strings"],
            n_layers=meta["n_layers"],
            features=tensors["features"],
            activations=tensors["activations"],
            logit_tokens=tensors["logit_tokens"],
            logit_probs=tensors["logit_probs"],
            logit_labels=meta["logit_labels"],
            adjacency=tensors["adjacency"],
            model_name=meta.get("model_name", ""),
            dictionary_name=meta.get("dictionary_name", ""),
            settings=meta.get("settings", {}),
            error_norms=tensors.get("error_norms"),
            logit_vectors=tensors.get("logit_vectors"),
            annotations=meta.get("annotations", {}),
        )

    def check_finite(self, where: str = "the graph") -> None:
        """A one-line error naming the first node whose activation or row of edges holds NaN or an
        infinity (a model or dictionary that overflowed, or a damaged file)."""
        bad = ~torch.isfinite(self.activations)
        if bool(bad.any()):
            node = int(bad.nonzero()[0])
            raise ClewError(
                f"{where}: the activation of {self.describe(node)} is {float(self.activations[node])}"
            )
        if not bool(torch.isfinite(self.logit_probs).all()):
            raise ClewError(f"{where}: a logit probability is NaN or infinite")
        for start in range(0, len(self.adjacency), 4096):
            block = self.adjacency[start : start + 4096]
            if bool(torch.isfinite(block.sum(1)).all()):  # NaN and infinities reach the sums: one fast pass
                continue
            rows = ~torch.isfinite(block).all(1)  # a sum may also overflow: look at the values
            if bool(rows.any()):
                node = int(self.row_nodes()[start + int(rows.nonzero()[0])])
                raise ClewError(f"{where}: the edges into {self.describe(node)} hold NaN or infinite values")


_TENSORS = {
    "tokens": (1, False),
    "features": (2, False),
    "activations": (1, True),
    "logit_tokens": (1, False),
    "logit_probs": (1, True),
    "adjacency": (2, True),
    "error_norms": (2, True),
    "logit_vectors": (2, True),
}
"""Each tensor of a graph file: (number of dimensions, floating point?)."""


def _check_file(meta: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> None:
    """Every field and tensor of a graph file present, of its type, and of sizes that agree with each
    other (a damaged or hostile file is a one-line error naming the field or tensor, never a crash or
    a huge allocation later)."""
    for name, kind in (("prompt", str), ("token_strings", list), ("n_layers", int), ("logit_labels", list)):
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise ClewError(f"{path}: field {name!r} is missing or not a {kind.__name__}")
    for name, kind in (
        ("model_name", str),
        ("dictionary_name", str),
        ("settings", dict),
        ("annotations", dict),
    ):
        if name in meta and not isinstance(meta[name], kind):
            raise ClewError(f"{path}: field {name!r} is not a {kind.__name__}")
    for name, (ndim, floating) in _TENSORS.items():
        if name not in tensors:
            if name in ("error_norms", "logit_vectors"):
                continue
            raise ClewError(f"{path}: tensor {name!r} is missing")
        t = tensors[name]
        if t.ndim != ndim or t.is_floating_point() != floating or t.dtype == torch.bool:
            raise ClewError(
                f"{path}: tensor {name!r} is {t.ndim}-d {t.dtype}, expected {ndim}-d "
                f"{'floating point' if floating else 'integer'}"
            )
    P, L = len(tensors["tokens"]), meta["n_layers"]
    F, T = len(tensors["features"]), len(tensors["logit_tokens"])
    if P < 1 or not 1 <= L <= 4096:
        raise ClewError(f"{path}: {P} tokens and {L} layers; expected at least one token and 1..4096 layers")
    if len(meta["token_strings"]) != P or not all(isinstance(x, str) for x in meta["token_strings"]):
        raise ClewError(
            f"{path}: field 'token_strings' has {len(meta['token_strings'])} strings for {P} tokens"
        )
    if len(meta["logit_labels"]) != T or not all(isinstance(x, str) for x in meta["logit_labels"]):
        raise ClewError(
            f"{path}: field 'logit_labels' has {len(meta['logit_labels'])} strings for {T} logits"
        )
    shapes = {
        "features": (F, 3),
        "activations": (F,),
        "logit_probs": (T,),
        "adjacency": (F + T, F + L * P + P + T),
        "error_norms": (L, P),
    }
    for name, shape in shapes.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise ClewError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )
    if "logit_vectors" in tensors and len(tensors["logit_vectors"]) != T:
        raise ClewError(
            f"{path}: tensor 'logit_vectors' has {len(tensors['logit_vectors'])} rows for {T} logits"
        )
    if F:
        layer, pos, index = tensors["features"].unbind(1)
        if int(layer.min()) < 0 or int(layer.max()) >= L or int(pos.min()) < 0 or int(pos.max()) >= P:
            raise ClewError(f"{path}: tensor 'features' has a layer or position outside the graph")
        if int(index.min()) < 0:
            raise ClewError(f"{path}: tensor 'features' has a negative feature index")

"""How the nodes of a local replacement model are numbered: one layout for the engine and the graph.

Nodes come in four blocks, always in this order::

    [ features (layer, position, index order) | errors (layer-major) | embeddings | logits ]

The engine numbers its columns (the sources) this way over *every* active feature, without logits;
a graph numbers its nodes this way over the features it *kept*, with its logit targets at the end.
:meth:`NodeLayout.columns_in` is the one translation between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NODE_KINDS = ("feature", "error", "embedding", "logit")
"""Node kinds, in layout order; :meth:`NodeLayout.kinds` numbers them 0..3."""


@dataclass(frozen=True)
class NodeLayout:
    n_features: int
    """Feature nodes (rows ``0 .. n_features - 1``)."""
    n_layers: int
    """Layers of the model: one error node per (layer, position)."""
    n_pos: int
    """Positions of the prompt: one embedding node each."""
    n_logits: int = 0
    """Logit targets, last."""

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def embed_offset(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_offset(self) -> int:
        return self.embed_offset + self.n_pos

    @property
    def n_sources(self) -> int:
        """Nodes that have outgoing edges: everything but the logits."""
        return self.logit_offset

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    def error(self, layer: int, pos: int) -> int:
        return self.error_offset + layer * self.n_pos + pos

    def embedding(self, pos: int) -> int:
        return self.embed_offset + pos

    def logit(self, j: int) -> int:
        return self.logit_offset + j

    def kind(self, node: int) -> str:
        """``"feature"``, ``"error"``, ``"embedding"`` or ``"logit"``."""
        if node < self.error_offset:
            return "feature"
        if node < self.embed_offset:
            return "error"
        if node < self.logit_offset:
            return "embedding"
        return "logit"

    def kinds(self) -> Tensor:
        """(n_nodes,) 0 feature, 1 error, 2 embedding, 3 logit."""
        k = torch.zeros(self.n_nodes, dtype=torch.long)
        k[self.error_offset : self.embed_offset] = 1
        k[self.embed_offset : self.logit_offset] = 2
        k[self.logit_offset :] = 3
        return k

    def error_layer_pos(self, node: int) -> tuple[int, int]:
        """(layer, position) of an error node."""
        return divmod(node - self.error_offset, self.n_pos)

    def shifted_to(self, outer: NodeLayout, node: int) -> int:
        """The number in ``outer`` (same layers and positions, other features) of this layout's error,
        embedding or logit node ``node``: each keeps its place after the features."""
        assert node >= self.error_offset, "a feature's number depends on which features each layout has"
        return node - self.error_offset + outer.error_offset

    def columns_in(self, outer: NodeLayout, features: Tensor) -> Tensor:
        """(n_sources,) where each of this layout's sources stands in ``outer`` (same layers and positions),
        when this layout's features are ``outer``'s features ``features`` (n_features,), in order."""
        assert (self.n_layers, self.n_pos) == (outer.n_layers, outer.n_pos), "layouts of different prompts"
        assert len(features) == self.n_features
        rest = outer.error_offset + torch.arange(outer.n_sources - outer.error_offset, device=features.device)
        return torch.cat([features.to(torch.long), rest])

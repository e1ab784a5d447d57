"""One class for every replacement dictionary: per-layer, skip and cross-layer transcoders.

A transcoder has, for each layer ``l`` it covers, an encoder that reads the model at the read point
of layer ``l`` and a decoder per destination layer that writes at the write point. A per-layer
transcoder (PLT) is the special case in which features of layer ``l`` write only to layer ``l``; a
cross-layer transcoder (CLT) writes to ``l, l+1, ..., n_layers-1``. A skip transcoder adds a dense
linear path ``x @ W_skip.T`` from the read point to the write point of the same layer.

Shapes: ``F`` = features per layer, ``d`` = ``d_model``, ``n`` = number of layers with a transcoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import Tensor, nn

from clew.dictionaries import activations as act
from clew.errors import ClewError
from clew.models.points import READ_POINTS, WRITE_POINTS

KINDS = ("plt", "clt")


@dataclass
class TranscoderConfig:
    n_layers: int
    """Number of transformer blocks of the model the dictionary is for; a CLT's features write up to
    layer ``n_layers - 1``. Layouts that do not record it give ``max(layers) + 1``."""
    d_model: int
    """Width of the residual stream: the encoders' input and the decoders' output."""
    n_features: int
    """Number of features of each layer's transcoder."""
    kind: str = "plt"
    """``"plt"``: a feature of layer ``l`` writes to layer ``l`` only; ``"clt"``: to every layer ``>= l``."""
    activation: str = "relu"
    """``"relu"``, ``"jumprelu"`` (``pre * (pre > threshold)``, a threshold per feature), ``"topk"`` (the
    ``k`` largest of ``relu(pre)`` per token) or ``"batchtopk"`` (at inference: a JumpReLU with the
    stored threshold when there is one, else TopK)."""
    k: int | None = None
    """Active features per token for ``"topk"`` (and for ``"batchtopk"`` without a threshold)."""
    read: str = "mlp_in"
    """Where the encoders read: ``"resid_mid"`` (the residual stream before the MLP's norm) or
    ``"mlp_in"`` (the normalised MLP input)."""
    write: str = "mlp_out"
    """Where the decoders write: ``"resid_delta"`` (what the MLP branch adds to the residual stream,
    after any post-MLP norm as in Gemma-2/3) or ``"mlp_out"`` (the MLP module's output, before any
    post-MLP norm). The two are the same for models without a post-MLP norm."""
    skip: bool = False
    """Each layer has a dense skip path ``x @ W_skip.T`` (``W_skip``: ``[d, d]``) from read to write point."""
    layers: list[int] | None = None
    """The model layers that have a transcoder, ascending; ``None`` means all ``range(n_layers)``."""
    model_name: str | None = None
    """Id of the model the dictionary was trained for (a Hugging Face id), when known."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form facts carried along: normalisation constants, training metrics, provenance."""

    def __post_init__(self) -> None:
        if self.layers is None:
            self.layers = list(range(self.n_layers))
        self.layers = sorted(int(layer) for layer in self.layers)
        problem = self.problem()
        if problem:
            raise ClewError(f"transcoder config: {problem}")

    def problem(self) -> str | None:
        """What is wrong with this configuration, as a phrase naming the field; ``None`` if nothing."""
        if self.kind not in KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if self.activation not in act.ACTIVATIONS:
            return f"activation {self.activation!r} is not one of {', '.join(act.ACTIVATIONS)}"
        if self.activation == "topk" and (self.k is None or self.k < 1):
            return f"activation 'topk' needs a positive k, got {self.k!r}"
        if self.read not in READ_POINTS:
            return f"read {self.read!r} is not one of {', '.join(READ_POINTS)}"
        if self.write not in WRITE_POINTS:
            return f"write {self.write!r} is not one of {', '.join(WRITE_POINTS)}"
        if min(self.n_layers, self.d_model, self.n_features) < 1:
            return "n_layers, d_model and n_features must be positive"
        assert self.layers is not None
        if not self.layers or len(set(self.layers)) != len(self.layers):
            return f"layers {self.layers} must be a non-empty list without repeats"
        if self.layers[0] < 0 or self.layers[-1] >= self.n_layers:
            return f"layers {self.layers} fall outside range(n_layers={self.n_layers})"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TranscoderConfig:
        return cls(**d)


class DecoderRows(Protocol):
    """Where one source layer's decoder lives when it is not in memory."""

    def rows(self, idx: Tensor, dst_layer: int) -> Tensor:
        """``[len(idx), d]``: the decoder vectors of features ``idx`` into ``dst_layer``."""
        ...

    def full(self, dst_layer: int) -> Tensor:
        """``[F, d]``: every feature's decoder vector into ``dst_layer``."""
        ...


class LazyDecoder:
    """One source layer's decoder in a safetensors file, read row by row on demand.

    The tensor under ``key`` is ``[F, d]`` (``dst_axis is None``: it writes to its own layer) or
    ``[F, len(dst_axis), d]`` where ``dst_axis[j]`` is the destination layer of slot ``j``.
    """

    def __init__(self, path: str | Path, key: str, dst_axis: list[int] | None):
        self.path = str(path)
        self.key = key
        self.dst_axis = dst_axis
        with safe_open(self.path, framework="pt") as f:
            self.shape = tuple(f.get_slice(key).get_shape())

    def _slot(self, dst_layer: int) -> int | None:
        if self.dst_axis is None:
            return None
        try:
            return self.dst_axis.index(dst_layer)
        except ValueError:
            raise ClewError(f"{self.path}: {self.key} has no decoder into layer {dst_layer}") from None

    def _read(self, index: tuple) -> Tensor:
        with safe_open(self.path, framework="pt") as f:
            return f.get_slice(self.key)[index]

    def _checked(self, out: Tensor) -> Tensor:
        """``out``, unless it holds a NaN or an infinity (checked on what is used, not on what is read)."""
        if out.is_floating_point() and not torch.isfinite(out).all():
            raise ClewError(f"{self.path}: {self.key} contains NaN or infinite values")
        return out

    def rows(self, idx: Tensor, dst_layer: int) -> Tensor:
        j = self._slot(dst_layer)
        idx = idx.detach().to("cpu", torch.long)
        if idx.numel() == 0:
            return self._read((slice(0, 0),) if j is None else (slice(0, 0), j))
        lo, hi = int(idx.min()), int(idx.max()) + 1  # one contiguous read, then pick the rows
        block = self._read((slice(lo, hi),) if j is None else (slice(lo, hi), j))
        self._checked(block[torch.unique(idx) - lo])  # each row used once, however often it is asked for
        return block[idx - lo]

    def full(self, dst_layer: int) -> Tensor:
        j = self._slot(dst_layer)
        return self._checked(self._read((slice(None),) if j is None else (slice(None), j)))


class Transcoder(nn.Module):
    """A transcoder set over some layers of a model: encoders in memory, decoders in memory or on disk.

    Parameters (in memory): ``W_enc`` ``[n, F, d]``, ``b_enc`` ``[n, F]``, ``b_dec`` ``[n, d]`` (indexed
    by destination layer), ``threshold`` ``[n, F]`` or ``None``, ``W_skip`` ``[n, d, d]`` or ``None``, and
    ``W_dec``: a list with, per source layer, ``[F, d]`` (PLT) or ``[F, n_dst, d]`` (CLT, slot ``j``
    for the ``j``-th of :meth:`dst_layers`), or ``None`` when the decoders are lazy. Row ``i`` of the
    stacked tensors belongs to ``cfg.layers[i]``; the methods take model layer numbers.
    """

    def __init__(
        self,
        cfg: TranscoderConfig,
        *,
        threshold: bool | None = None,
        lazy_decoders: dict[int, DecoderRows] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        source: str | None = None,
    ):
        """Zero-initialised weights for ``cfg``; ``threshold`` defaults to whether the activation is JumpReLU."""
        super().__init__()
        self.cfg = cfg
        self.source = source or "transcoder"
        """Where the dictionary came from (a path), used in error messages."""
        layers = cfg.layers
        assert layers is not None
        self._slots = {layer: i for i, layer in enumerate(layers)}
        n, F, d = len(layers), cfg.n_features, cfg.d_model
        kw: dict[str, Any] = {"device": device, "dtype": dtype or torch.float32}
        self.W_enc = nn.Parameter(torch.zeros(n, F, d, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n, F, **kw))
        self.b_dec = nn.Parameter(torch.zeros(n, d, **kw))
        if threshold is None:
            threshold = cfg.activation == "jumprelu"
        if cfg.activation == "jumprelu" and not threshold:
            raise ClewError(f"{self.source}: activation 'jumprelu' needs a threshold")
        self.threshold = nn.Parameter(torch.zeros(n, F, **kw)) if threshold else None
        self.W_skip = nn.Parameter(torch.zeros(n, d, d, **kw)) if cfg.skip else None
        self._lazy = lazy_decoders
        if lazy_decoders is None:
            shapes = [(F, d) if cfg.kind == "plt" else (F, len(self.dst_layers(src)), d) for src in layers]
            self.W_dec: nn.ParameterList | None = nn.ParameterList(
                [nn.Parameter(torch.zeros(*shape, **kw)) for shape in shapes]
            )
        else:
            missing = [layer for layer in layers if layer not in lazy_decoders]
            if missing:
                raise ClewError(f"{self.source}: no decoder for layers {missing}")
            self.W_dec = None

    # ----- bookkeeping -------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        """The model layers that have a transcoder, ascending."""
        assert self.cfg.layers is not None
        return self.cfg.layers

    @property
    def lazy(self) -> bool:
        """Whether decoder rows are read from disk on demand."""
        return self._lazy is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def slot(self, layer: int) -> int:
        """Row of ``layer`` in the stacked parameters."""
        try:
            return self._slots[layer]
        except KeyError:
            raise ClewError(
                f"{self.source}: no transcoder at layer {layer} (layers: {self.layers})"
            ) from None

    def dst_layers(self, src_layer: int) -> list[int]:
        """The layers that features of ``src_layer`` write to."""
        if self.cfg.kind == "plt":
            return [src_layer]
        return [layer for layer in self.layers if layer >= src_layer]

    def src_layers(self, dst_layer: int) -> list[int]:
        """The layers whose features write to ``dst_layer``."""
        if self.cfg.kind == "plt":
            return [dst_layer]
        return [layer for layer in self.layers if layer <= dst_layer]

    def _dst_slot(self, src_layer: int, dst_layer: int) -> int | None:
        self.slot(src_layer)
        self.slot(dst_layer)
        dsts = self.dst_layers(src_layer)
        if dst_layer not in dsts:
            raise ClewError(f"{self.source}: features of layer {src_layer} do not write to layer {dst_layer}")
        return None if self.cfg.kind == "plt" else dsts.index(dst_layer)

    def check_compatible(self, model_cfg: Any) -> None:
        """Raise a one-line :class:`ClewError` unless this dictionary fits a model of config ``model_cfg``
        (anything with ``d_model`` and ``n_layers``)."""
        if self.cfg.d_model != model_cfg.d_model:
            raise ClewError(
                f"{self.source}: d_model is {self.cfg.d_model} but the model's residual stream is "
                f"{model_cfg.d_model} wide"
            )
        if self.layers[-1] >= model_cfg.n_layers:
            raise ClewError(
                f"{self.source}: layers go up to {self.layers[-1]} but the model has {model_cfg.n_layers} layers"
            )
        if self.cfg.kind == "clt" and self.cfg.n_layers != model_cfg.n_layers:
            raise ClewError(
                f"{self.source}: n_layers is {self.cfg.n_layers} but the model has {model_cfg.n_layers} layers"
            )

    # ----- encoder ------------------------------------------------------------------------------

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """``x @ W_enc[layer].T + b_enc[layer]``: ``[..., d] -> [..., F]``."""
        i = self.slot(layer)
        return nn.functional.linear(x.to(self.dtype), self.W_enc[i], self.b_enc[i])

    def active_threshold(self, layer: int) -> Tensor | None:
        """``[F]``: when the nonlinearity of ``layer`` is a per-feature threshold (JumpReLU, and BatchTopK
        at inference, which keeps its learnt threshold), that threshold: a feature is active exactly
        where its pre-activation exceeds it. ``None`` for ReLU and top-k."""
        kind = self.cfg.activation
        if kind == "jumprelu" or (kind == "batchtopk" and self.threshold is not None):
            assert self.threshold is not None
            return self.threshold[self.slot(layer)]
        return None

    def activate(self, layer: int, pre: Tensor) -> Tensor:
        """The nonlinearity of ``layer``: ``[..., F] -> [..., F]``."""
        self.slot(layer)  # a layer without a transcoder is an error here too, whatever the nonlinearity
        threshold = self.active_threshold(layer)
        if threshold is not None:
            return act.jumprelu(pre, threshold)
        kind = self.cfg.activation
        if kind in ("topk", "batchtopk"):
            if self.cfg.k is None:
                raise ClewError(f"{self.source}: activation {kind!r} without a threshold needs k")
            return act.topk(pre, self.cfg.k)
        return act.relu(pre)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Feature activations of ``layer`` for inputs read there: ``[..., d] -> [..., F]``. Outside
        autograd a threshold or ReLU is applied in place on the pre-activations (the same values, no
        second ``[..., F]`` tensor)."""
        pre = self.pre_activations(layer, x)
        if pre.requires_grad:
            return self.activate(layer, pre)
        threshold = self.active_threshold(layer)
        if threshold is not None:
            return pre.masked_fill_(pre <= threshold, 0.0)
        if self.cfg.activation == "relu":
            return pre.relu_()
        return self.activate(layer, pre)

    def encoder_vectors(self, layer: int, idx: Tensor) -> Tensor:
        """``[len(idx), d]``: rows ``idx`` of ``W_enc[layer]``."""
        W = self.W_enc[self.slot(layer)]
        return W[torch.as_tensor(idx, dtype=torch.long, device=W.device)]

    def threshold_of(self, layer: int) -> Tensor | None:
        """``[F]``: the JumpReLU thresholds of ``layer``, or ``None``."""
        return None if self.threshold is None else self.threshold[self.slot(layer)]

    # ----- decoder ------------------------------------------------------------------------------

    def decoder_vectors(self, src_layer: int, idx: Tensor, dst_layer: int) -> Tensor:
        """``[len(idx), d]``: what features ``idx`` of ``src_layer`` write into ``dst_layer`` per unit activation."""
        j = self._dst_slot(src_layer, dst_layer)
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self._lazy is not None:
            rows = self._lazy[src_layer].rows(idx, dst_layer)
            return rows.to(device=self.device, dtype=self.dtype)
        assert self.W_dec is not None
        W = self.W_dec[self.slot(src_layer)]
        idx = idx.to(W.device)
        return W[idx] if j is None else W[idx, j]

    def decoder_weights(self, src_layer: int, dst_layer: int) -> Tensor:
        """``[F, d]``: the whole decoder of ``src_layer`` into ``dst_layer`` (read in full when lazy)."""
        j = self._dst_slot(src_layer, dst_layer)
        if self._lazy is not None:
            return self._lazy[src_layer].full(dst_layer).to(device=self.device, dtype=self.dtype)
        assert self.W_dec is not None
        W = self.W_dec[self.slot(src_layer)]
        return W if j is None else W[:, j]

    def decoder_bias(self, dst_layer: int) -> Tensor:
        """``[d]``: the decoder bias added at ``dst_layer``."""
        return self.b_dec[self.slot(dst_layer)]

    def decode(self, acts: dict[int, Tensor], dst_layer: int) -> Tensor:
        """The reconstruction at ``dst_layer``: ``sum_src acts[src] @ W_dec[src -> dst] + b_dec[dst]``.

        ``acts`` maps source layers to ``[..., F]`` activations (dense or sparse COO); the layers that write to ``dst_layer``
        (all ``<= dst_layer`` for a CLT, ``dst_layer`` itself for a PLT) are used, others ignored, and a
        missing one counts as zero. Only the decoder rows of features active somewhere are touched,
        so lazy decoders read little. Returns ``[..., d]`` (without the skip term).
        """
        if not acts:
            raise ClewError(f"{self.source}: decode needs the activations of at least one layer")
        lead = next(iter(acts.values())).shape[:-1]
        F = self.cfg.n_features
        total: Tensor | None = None
        for src in self.src_layers(dst_layer):
            a = acts.get(src)
            if a is None:
                continue
            if a.is_sparse:
                a = a.to_dense()
            flat = a.reshape(-1, F)  # [N, F]
            active = (flat != 0).any(dim=0).nonzero().squeeze(-1)  # [n_active]
            if active.numel() == 0:
                continue
            rows = self.decoder_vectors(src, active, dst_layer)  # [n_active, d]
            part = flat[:, active].to(rows.dtype) @ rows  # [N, d]
            total = part if total is None else total + part
        bias = self.decoder_bias(dst_layer)
        if total is None:
            return bias.expand(*lead, -1).clone()
        return total.reshape(*lead, -1) + bias

    def skip_term(self, layer: int, x: Tensor) -> Tensor | None:
        """``x @ W_skip[layer].T`` (``[..., d] -> [..., d]``), or ``None`` without a skip path."""
        if self.W_skip is None:
            return None
        return x.to(self.dtype) @ self.W_skip[self.slot(layer)].T

    def reconstruct(self, inputs: dict[int, Tensor]) -> dict[int, Tensor]:
        """Encode ``inputs`` (layer -> ``[..., d]`` at the read point) and return, for each of those
        layers, the reconstruction at its write point (decoders + bias + skip), ``[..., d]``."""
        acts = {layer: self.encode(layer, x) for layer, x in inputs.items()}
        out = {}
        for layer, x in inputs.items():
            y = self.decode(acts, layer)
            skip = self.skip_term(layer, x)
            out[layer] = y if skip is None else y + skip
        return out

    forward = reconstruct

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"kind={c.kind}, layers={len(self.layers)}/{c.n_layers}, d_model={c.d_model}, "
            f"n_features={c.n_features}, activation={c.activation}, read={c.read}, write={c.write}, "
            f"skip={c.skip}, lazy={self.lazy}"
        )

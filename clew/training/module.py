"""The transcoder while it trains: parameters in normalised units, the losses, and the export.

Training works on normalised activations: the input of layer ``l`` is multiplied by ``in_scale[l]`` and
its target by ``out_scale[l]`` (constants chosen so that the mean squared norm of each is 1). The
exported :class:`~clew.dictionaries.Transcoder` has those constants folded into its weights, so it
works on raw activations and its feature activations are the same numbers as during training.

Shapes: ``n`` layers, ``B`` tokens (this process's part of the batch), ``F`` features, ``d`` d_model.
Per-layer tensors are laid out layer first: ``[n, B, ...]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clew.dictionaries.transcoder import Transcoder, TranscoderConfig
from clew.training import dist
from clew.training.config import TrainConfig


class _JumpReLU(torch.autograd.Function):
    """``pre * (pre > threshold)``; the threshold learns through a straight-through estimator: the
    derivative of the step is replaced by a rectangle kernel of width ``bandwidth`` around it."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        on = pre > threshold
        ctx.save_for_backward(pre, threshold, on)
        ctx.bandwidth = bandwidth
        return pre * on

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        pre, threshold, on = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(grad.dtype) / eps
        # d/dθ [pre * H(pre - θ)] = -pre * δ(pre - θ) ≈ -θ * K((pre - θ) / ε) / ε
        grad_threshold = (-threshold * kernel * grad).sum(dim=1, keepdim=True)
        return grad * on, grad_threshold, None


@dataclass
class StepOutput:
    """A step's loss and its statistics (detached; sums over this process's tokens unless noted)."""

    loss: Tensor
    """The scalar to differentiate (already multiplied by the world size, see :meth:`TrainingTranscoder.forward`)."""
    sse: Tensor
    """``[n]`` summed squared reconstruction error per destination layer."""
    sst: Tensor
    """``[n]`` summed squared deviation of the targets from the global batch mean (global already)."""
    active: Tensor
    """``[n]`` number of (token, feature) activations that are non-zero, per source layer."""
    fired: Tensor
    """``[n, F]`` whether each feature fired on some token of this process's batch."""
    parts: dict[str, Tensor]
    """The loss's terms, this process's share (they add up over the processes), for display."""


class TrainingTranscoder(nn.Module):
    """A PLT, skip transcoder or CLT in training; ``forward(x, y, sparsity)`` gives the loss."""

    def __init__(self, cfg: TrainConfig, layers: list[int], n_model_layers: int, d_model: int, seed: int):
        super().__init__()
        self.cfg, self.layers, self.n_model_layers = cfg, layers, n_model_layers
        n, d = len(layers), d_model
        F = self.n_features = cfg.features_for(d)
        self.clt = cfg.kind == "clt"
        g = torch.Generator().manual_seed(seed)
        W_enc = torch.randn(n, F, d, generator=g)
        self.W_enc = nn.Parameter(W_enc / W_enc.norm(dim=-1, keepdim=True))  # unit rows
        self.b_enc = nn.Parameter(torch.zeros(n, F))
        self.b_dec = nn.Parameter(torch.zeros(n, d))
        decoders = []
        for i in range(n):
            n_dst = n - i if self.clt else 1
            if cfg.activation in ("topk", "batchtopk"):
                W = torch.zeros(F, n_dst, d)  # sparsify's choice for transcoders
            else:
                W = torch.randn(F, n_dst, d, generator=g)
                W = 0.1 * W / W.flatten(1).norm(dim=-1)[:, None, None]  # rows of norm 0.1 over all dst
            decoders.append(nn.Parameter(W if self.clt else W[:, 0]))
        self.W_dec = nn.ParameterList(decoders)
        self.W_skip = nn.Parameter(torch.zeros(n, d, d)) if cfg.kind == "skip" else None
        if cfg.activation == "jumprelu":
            self.log_threshold: nn.Parameter | None = nn.Parameter(
                torch.full((n, F), math.log(cfg.threshold_init or d**-0.5))
            )
        else:
            self.log_threshold = None
        self.register_buffer("in_scale", torch.ones(n))
        self.register_buffer("out_scale", torch.ones(n))
        self.register_buffer("batch_threshold", torch.full((n,), -1.0))  # BatchTopK's running threshold

    # ----- setup on the first data ----------------------------------------------------------------

    @torch.no_grad()
    def init_from_data(self, x: Tensor, y: Tensor) -> None:
        """Set the normalisation constants and ``b_dec`` (the mean target) from ``x``, ``y`` ``[T, n, d]``
        (this process's tokens; the statistics are summed over all processes)."""
        stats = torch.stack([x.pow(2).sum(-1).sum(0), y.pow(2).sum(-1).sum(0)]).double()  # [2, n]
        count = dist.sum_(torch.tensor([float(x.shape[0])], dtype=torch.float64))
        stats = dist.sum_(stats) / count
        if self.cfg.normalize:
            self.in_scale.copy_(stats[0].clamp_min(1e-30).rsqrt().float())
            self.out_scale.copy_(stats[1].clamp_min(1e-30).rsqrt().float())
        mean = dist.sum_(y.sum(0).double()) / count  # [n, d]
        self.b_dec.copy_((mean * self.out_scale[:, None].double()).float())

    # ----- the forward pass --------------------------------------------------------------------------

    def threshold(self) -> Tensor | None:
        """``[n, F]`` JumpReLU thresholds, or ``None``."""
        return None if self.log_threshold is None else self.log_threshold.exp()

    def pre_activations(self, x: Tensor) -> Tensor:
        """``[n, B, d]`` normalised inputs -> ``[n, B, F]``."""
        return torch.baddbmm(self.b_enc[:, None, :], x, self.W_enc.transpose(1, 2))

    def activate(self, pre: Tensor) -> Tensor:
        """``[n, B, F]`` -> ``[n, B, F]`` activations (BatchTopK over the global batch, per layer)."""
        kind, k = self.cfg.activation, self.cfg.k
        if kind == "jumprelu":
            threshold = self.threshold()
            assert threshold is not None
            return _JumpReLU.apply(pre, threshold[:, None, :], self.cfg.bandwidth)
        acts = torch.relu(pre)
        if kind == "topk":
            values, idx = acts.topk(min(k, acts.shape[-1]), dim=-1, sorted=False)
            return torch.zeros_like(acts).scatter(-1, idx, values)
        if kind == "batchtopk":
            kth = self._global_kth(acts.detach(), k)  # [n]
            if self.training:
                self._track_threshold(kth)
            return acts * (acts >= kth[:, None, None])
        return acts

    def _global_kth(self, acts: Tensor, k: int) -> Tensor:
        """``[n]``: per layer, the ``(k * B_global)``-th largest activation over the global batch."""
        n, B, F = acts.shape
        total = int(dist.sum_(torch.tensor([B])).item()) * k
        flat = acts.reshape(n, B * F)
        local = flat.topk(min(total, B * F), dim=-1).values  # the global top values are among these
        pool = dist.gather(local.T.contiguous()).T  # [n, world * m]
        kth = pool.topk(min(total, pool.shape[1]), dim=-1).values[:, -1]
        return kth.clamp_min(torch.finfo(acts.dtype).tiny)  # never let zeros through

    @torch.no_grad()
    def _track_threshold(self, kth: Tensor) -> None:
        first = self.batch_threshold < 0
        self.batch_threshold.copy_(torch.where(first, kth, 0.95 * self.batch_threshold + 0.05 * kth))

    def decode(self, acts: Tensor, x: Tensor | None, bias: bool = True) -> Tensor:
        """``[n, B, F]`` activations (and ``[n, B, d]`` inputs for the skip path) -> ``[n, B, d]``."""
        n, B, _ = acts.shape
        per_layer = acts.unbind(0)  # one gradient buffer for all layers, not one per slice
        if self.clt:
            recon = acts.new_zeros(n, B, self.W_enc.shape[-1])
            for i, (a, W) in enumerate(zip(per_layer, self.W_dec)):
                F, n_dst, d = W.shape
                recon[i:] += (a @ W.reshape(F, n_dst * d)).view(B, n_dst, d).transpose(0, 1)
        else:
            recon = torch.stack([a @ W for a, W in zip(per_layer, self.W_dec)])  # [n, B, d]
        if bias:
            recon = recon + self.b_dec[:, None, :]
        if self.W_skip is not None and x is not None:
            recon = recon + torch.bmm(x, self.W_skip.transpose(1, 2))
        return recon

    def decode_sparse(self, values: Tensor, idx: Tensor, x: Tensor | None, bias: bool = True) -> Tensor:
        """:meth:`decode` for activations given as their ``k`` largest per token: ``values`` and ``idx``
        ``[n, B, k]`` -> ``[n, B, d]``, reading only those decoder rows (TopK's fast path)."""
        n, B, _ = values.shape
        d = self.W_enc.shape[-1]
        rows = []
        for v, i, W in zip(values.unbind(0), idx.unbind(0), self.W_dec):
            table = W.reshape(W.shape[0], -1)  # [F, n_dst * d]
            rows.append(
                nn.functional.embedding_bag(i, table, per_sample_weights=v, mode="sum")
            )  # [B, n_dst*d]
        if self.clt:
            recon = values.new_zeros(n, B, d)
            for i, y in enumerate(rows):
                recon[i:] += y.view(B, -1, d).transpose(0, 1)
        else:
            recon = torch.stack(rows)
        if bias:
            recon = recon + self.b_dec[:, None, :]
        if self.W_skip is not None and x is not None:
            recon = recon + torch.bmm(x, self.W_skip.transpose(1, 2))
        return recon

    def decoder_norms(self) -> Tensor:
        """``[n, F]``: each feature's decoder norm over every layer it writes to."""
        return torch.stack([W.flatten(1).norm(dim=-1) if self.clt else W.norm(dim=-1) for W in self.W_dec])

    def forward(self, x: Tensor, y: Tensor, sparsity: float, dead: Tensor | None = None) -> StepOutput:
        """The loss on raw activations ``x``, ``y`` ``[B, n, d]`` (this process's part of the batch).

        Every term is a sum over this process's tokens divided by a *global* count or variance and
        multiplied by the number of processes, so that DistributedDataParallel's averaging of the
        gradients yields exactly the gradient of the loss on the global batch.
        """
        cfg = self.cfg
        x = (x.transpose(0, 1) * self.in_scale[:, None, None]).contiguous()  # [n, B, d]
        y = (y.transpose(0, 1) * self.out_scale[:, None, None]).contiguous()
        n, B, d = x.shape
        N, sst = _global_count_and_spread(y)  # the global batch's token count and [n] variance sums
        scale = dist.world()  # DDP averages gradients over processes

        pre = self.pre_activations(x)  # [n, B, F]
        acts: Tensor | None = None
        if cfg.activation == "topk":  # sparse: the k largest per token, decoded row by row
            values, idx = torch.relu(pre).topk(min(cfg.k, pre.shape[-1]), dim=-1, sorted=False)  # [n, B, k]
            recon = self.decode_sparse(values, idx, x)
            on = values.detach() > 0
            active = on.sum((1, 2)).float()
            hits = torch.zeros(n, pre.shape[-1], device=pre.device).scatter_add_(
                1, idx.flatten(1), on.flatten(1).float()
            )
            fired = hits > 0
        else:
            acts = self.activate(pre)
            recon = self.decode(acts, x)
            on = acts.detach() != 0
            active, fired = on.sum((1, 2)).float(), on.any(dim=1)
        err = recon - y
        sse = err.pow(2).sum((1, 2))  # [n]
        parts: dict[str, Tensor] = {}
        if cfg.activation in ("topk", "batchtopk"):
            loss = (sse / sst.clamp_min(1e-12)).sum() * scale
            parts["fvu_sum"] = loss.detach() / scale
            if cfg.auxk_alpha > 0 and dead is not None and bool(dead.any()):
                aux = self._auxk_loss(pre, err.detach(), dead) * scale
                parts["auxk"] = aux.detach() / scale
                loss = loss + cfg.auxk_alpha * aux
        else:
            mse = sse.sum() / N * scale
            parts["mse"] = mse.detach() / scale
            norms = self.decoder_norms()  # [n, F]
            assert acts is not None
            penalty = torch.tanh(cfg.sparsity_c * norms[:, None, :] * acts).sum() / N * scale
            threshold = self.threshold()
            below = (threshold[:, None, :] - pre) if threshold is not None else -pre
            pre_penalty = torch.relu(below).sum() / N * scale
            parts["tanh_penalty"] = penalty.detach() / scale
            parts["preact"] = pre_penalty.detach() / scale
            loss = mse + sparsity * penalty + cfg.preact_penalty * pre_penalty
        return StepOutput(
            loss=loss, sse=sse.detach(), sst=sst.detach(), active=active, fired=fired, parts=parts
        )

    def _auxk_loss(self, pre: Tensor, err: Tensor, dead: Tensor) -> Tensor:
        """FVU of the residual error ``err`` ``[n, B, d]`` reconstructed from the dead features alone (each
        token's ``d / 2`` largest), without biases; the target variance is global."""
        n, B, d = err.shape
        k_aux = min(d // 2, int(dead.sum(-1).max().item()))
        masked = torch.where(dead[:, None, :], torch.relu(pre), torch.zeros_like(pre))
        values, idx = masked.topk(k_aux, dim=-1, sorted=False)  # [n, B, k_aux]
        e_hat = self.decode_sparse(values, idx, None, bias=False)
        _, sst = _global_count_and_spread(err)
        return ((e_hat - err).pow(2).sum((1, 2)) / sst.clamp_min(1e-12)).sum()

    # ----- export ------------------------------------------------------------------------------------

    @torch.no_grad()
    def export(self, model_name: str | None = None, extra: dict | None = None) -> Transcoder:
        """A :class:`Transcoder` on raw activations: the normalisation folded into the weights."""
        cfg = self.cfg
        activation = cfg.activation
        tc_cfg = TranscoderConfig(
            n_layers=self.n_model_layers,
            d_model=self.W_enc.shape[-1],
            n_features=self.n_features,
            kind="clt" if self.clt else "plt",
            activation=activation,
            k=cfg.k if activation in ("topk", "batchtopk") else None,
            read=cfg.read,
            write=cfg.write,
            skip=cfg.kind == "skip",
            layers=list(self.layers),
            model_name=model_name,
            extra={
                "normalisation": {
                    "input_scale": [float(v) for v in self.in_scale],
                    "target_scale": [float(v) for v in self.out_scale],
                    "folded_into_weights": True,
                    "note": "training multiplied inputs and targets by these; the saved weights work on raw "
                    "activations",
                },
                **(extra or {}),
            },
        )
        has_threshold = activation == "jumprelu" or (
            activation == "batchtopk" and bool((self.batch_threshold > 0).all())
        )
        tc = Transcoder(tc_cfg, threshold=has_threshold)
        s_in, s_out = self.in_scale, self.out_scale
        tc.W_enc.copy_(self.W_enc * s_in[:, None, None])
        tc.b_enc.copy_(self.b_enc)
        tc.b_dec.copy_(self.b_dec / s_out[:, None])
        if tc.threshold is not None:
            if activation == "jumprelu":
                tc.threshold.copy_(self.threshold())
            else:
                tc.threshold.copy_(self.batch_threshold[:, None].expand_as(tc.threshold))
        if tc.W_skip is not None and self.W_skip is not None:
            tc.W_skip.copy_(self.W_skip * (s_in / s_out)[:, None, None])
        assert tc.W_dec is not None
        n = len(self.layers)
        for i, W in enumerate(self.W_dec):
            if self.clt:
                tc.W_dec[i].copy_(W / s_out[i:n][None, :, None])
            else:
                tc.W_dec[i].copy_(W / s_out[i])
        return tc


def _global_count_and_spread(y: Tensor) -> tuple[Tensor, Tensor]:
    """For ``y`` ``[n, B, d]`` (this process's part): the global token count and, per layer, the global sum
    of squared deviations from the global mean, ``[n]`` (computed in float64, without gradient)."""
    with torch.no_grad():
        n, B, d = y.shape
        yd = y.double()
        totals = dist.sum_(torch.cat([yd.new_tensor([float(B)]), yd.sum(1).flatten(), yd.pow(2).sum((1, 2))]))
        N = totals[0]
        y_sum, y_sq = totals[1 : 1 + n * d].view(n, d), totals[1 + n * d :]
        return N.float(), (y_sq - y_sum.pow(2).sum(-1) / N).float()

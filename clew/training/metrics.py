"""How good a transcoder is, measured the way every library reports it.

On a set of evaluation contexts ``[N, P]`` (position 0 left out of the activation statistics when it
holds the BOS token, as in training):

- **L0**: per layer, the mean number of non-zero features per token; overall, the mean over layers.
- **FVU** (fraction of variance unexplained), *per batch*, the batch being the whole evaluation set:
  for layer ``l``, ``sum_t ||y_t - yhat_t||^2 / sum_t ||y_t - mean_t(y)||^2`` over its tokens ``t``
  (``y`` the true MLP output at the write point, ``yhat`` the reconstruction); overall, the same ratio
  with numerator and denominator each summed over layers. A perfect dictionary scores 0; one that
  always outputs the mean scores 1.
- **Dead fraction**: features that never fired on any evaluation token, per layer and overall.
- **CE-loss score**: ``(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)``, where ``CE`` is the mean
  next-token cross-entropy over every position, ``spliced`` runs the model with the transcoder in place
  of the MLP (no error terms), and ``ablated`` with the MLP's output set to zero. Per layer: that layer
  alone is spliced or ablated (for a CLT, the features of earlier layers, computed from the clean
  run, contribute to it); overall: every layer of the transcoder at once. 1 is perfect, 0 is no
  better than deleting the MLP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clew.dictionaries.transcoder import Transcoder
from clew.models.points import read_input
from clew.training.data import activations


@dataclass
class LayerMetrics:
    layer: int
    l0: float
    """Mean number of active features per token."""
    fvu: float
    """Fraction of variance unexplained at this layer's write point."""
    dead_fraction: float
    """Fraction of this layer's features that never fired."""
    ce_spliced: float | None = None
    """Cross-entropy with this layer's MLP replaced by the transcoder."""
    ce_ablated: float | None = None
    """Cross-entropy with this layer's MLP output set to zero."""
    ce_score: float | None = None
    """``(ce_ablated - ce_spliced) / (ce_ablated - ce_clean)``."""


@dataclass
class Metrics:
    """The evaluation of a transcoder; :meth:`table` prints it."""

    layers: list[LayerMetrics]
    l0: float
    """Mean over layers of the per-layer L0."""
    fvu: float
    """Overall FVU: squared errors summed over layers over squared deviations summed over layers."""
    dead_fraction: float
    """Fraction of all features that never fired."""
    ce_clean: float
    ce_spliced: float
    """Every layer of the transcoder spliced in at once."""
    ce_ablated: float
    """Every layer of the transcoder zero-ablated at once."""
    ce_score: float
    n_tokens: int
    """Tokens in the activation statistics (L0, FVU, dead)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A fixed-width table: one row per layer and one for all layers together."""

        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        head = f"{'layer':>5}  {'L0':>8}  {'FVU':>7}  {'dead':>7}  {'CE spliced':>10}  {'CE ablated':>10}  {'CE score':>8}"
        rows = [head, "-" * len(head)]
        for m in self.layers:
            rows.append(
                f"{m.layer:>5}  {m.l0:>8.2f}  {m.fvu:>7.4f}  {m.dead_fraction:>7.2%}  "
                f"{num(m.ce_spliced, '10.4f'):>10}  {num(m.ce_ablated, '10.4f'):>10}  {num(m.ce_score, '8.4f'):>8}"
            )
        rows.append("-" * len(head))
        rows.append(
            f"{'all':>5}  {self.l0:>8.2f}  {self.fvu:>7.4f}  {self.dead_fraction:>7.2%}  "
            f"{num(self.ce_spliced, '10.4f'):>10}  {num(self.ce_ablated, '10.4f'):>10}  {num(self.ce_score, '8.4f'):>8}"
        )
        rows.append(
            f"clean CE {self.ce_clean:.4f}; {self.n_tokens} tokens; L0 is per layer, FVU over the set"
        )
        return "\n".join(rows)


class _Splice:
    """The MLP replacement of a CE measurement: the transcoder at ``splice``, zero at ``ablate``, the
    model's own MLP elsewhere."""

    def __init__(self, model: Any, tc: Transcoder, splice: set[int], ablate: set[int]):
        self.model, self.tc, self.splice, self.ablate = model, tc, splice, ablate
        self.write = tc.cfg.write
        self.last = max(splice) if splice else -1
        self.acts: dict[int, Tensor] = {}

    def __call__(self, layer: int, resid_mid: Tensor, mlp_in: Tensor) -> Tensor:
        if layer in self.ablate:
            return torch.zeros_like(resid_mid)
        tc = self.tc
        if layer in tc.layers and layer <= self.last:  # a CLT's earlier layers feed the spliced one
            x = read_input(tc.cfg.read, resid_mid, mlp_in)
            self.acts[layer] = tc.encode(layer, x)
            if layer in self.splice:
                out = tc.decode(self.acts, layer)
                skip = tc.skip_term(layer, x)
                return (out if skip is None else out + skip).to(resid_mid.dtype)
        return self.model.mlp_branch(layer, mlp_in, self.write)


def _ce_sum(logits: Tensor, tokens: Tensor) -> float:
    """Summed next-token cross-entropy of ``tokens`` ``[B, P]`` under ``logits`` ``[B, P, V]``."""
    V = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1), reduction="sum"
    ).item()


@torch.no_grad()
def evaluate(
    model: Any,
    tc: Transcoder,
    tokens: Tensor,
    *,
    batch_size: int = 8,
    skip_first: bool | None = None,
    per_layer_ce: bool = True,
) -> Metrics:
    """Evaluate ``tc`` on the contexts ``tokens`` ``[N, P]`` (see the module docstring for definitions).

    ``skip_first``: leave position 0 out of L0, FVU and dead fraction (default: when the model's tokenizer
    has a BOS token). ``per_layer_ce``: also splice and ablate each layer alone (``2 n`` more passes).
    """
    tc.check_compatible(model.cfg)
    if skip_first is None:
        skip_first = getattr(getattr(model, "tokenizer", None), "bos_token_id", None) is not None
    device = next(model.parameters()).device
    layers = tc.layers
    n, Fn = len(layers), tc.cfg.n_features
    sse = torch.zeros(n, dtype=torch.float64)
    y_sum = torch.zeros(n, tc.cfg.d_model, dtype=torch.float64)
    y_sq = torch.zeros(n, dtype=torch.float64)
    active = torch.zeros(n, dtype=torch.float64)
    fired = torch.zeros(n, Fn, dtype=torch.bool)
    count = 0
    runs: dict[str, float] = {}  # summed CE per configuration
    configs: dict[str, tuple[set[int], set[int]]] = {
        "spliced": (set(layers), set()),
        "ablated": (set(), set(layers)),
    }
    if per_layer_ce:
        for layer in layers:
            configs[f"spliced/{layer}"] = ({layer}, set())
            configs[f"ablated/{layer}"] = (set(), {layer})
    n_predictions = 0
    for chunk in tokens.to(device).split(batch_size):
        x, y = activations(model, chunk, layers, tc.cfg.read, tc.cfg.write)  # [b, P, n, d]
        if skip_first:
            x, y = x[:, 1:], y[:, 1:]
        x, y = x.flatten(0, 1), y.flatten(0, 1)  # [T, n, d]
        acts = {layer: tc.encode(layer, x[:, i]) for i, layer in enumerate(layers)}
        for i, layer in enumerate(layers):
            on = acts[layer] != 0
            active[i] += on.sum().item()
            fired[i] |= on.any(0).cpu()
            recon = tc.decode(acts, layer)
            skip = tc.skip_term(layer, x[:, i])
            if skip is not None:
                recon = recon + skip
            target = y[:, i].double()
            sse[i] += (recon.double() - target).pow(2).sum().item()
            y_sum[i] += target.sum(0).cpu()
            y_sq[i] += target.pow(2).sum().item()
        count += x.shape[0]
        n_predictions += chunk.shape[0] * (chunk.shape[1] - 1)
        runs["clean"] = runs.get("clean", 0.0) + _ce_sum(model.run(chunk).logits, chunk)
        for name, (splice, ablate) in configs.items():
            logits = model.run(chunk, mlp=_Splice(model, tc, splice, ablate)).logits
            runs[name] = runs.get(name, 0.0) + _ce_sum(logits, chunk)
    ce = {name: total / max(n_predictions, 1) for name, total in runs.items()}
    sst = y_sq - y_sum.pow(2).sum(-1) / max(count, 1)  # [n]

    def score(ablated: float, spliced: float) -> float:
        gap = ablated - ce["clean"]
        return (ablated - spliced) / gap if gap != 0 else float("nan")

    per_layer = []
    for i, layer in enumerate(layers):
        m = LayerMetrics(
            layer=layer,
            l0=active[i].item() / max(count, 1),
            fvu=(sse[i] / sst[i]).item() if sst[i] > 0 else float("nan"),
            dead_fraction=1.0 - fired[i].float().mean().item(),
        )
        if per_layer_ce:
            m.ce_spliced, m.ce_ablated = ce[f"spliced/{layer}"], ce[f"ablated/{layer}"]
            m.ce_score = score(m.ce_ablated, m.ce_spliced)
        per_layer.append(m)
    return Metrics(
        layers=per_layer,
        l0=sum(m.l0 for m in per_layer) / n,
        fvu=(sse.sum() / sst.sum()).item() if sst.sum() > 0 else float("nan"),
        dead_fraction=1.0 - fired.float().mean().item(),
        ce_clean=ce["clean"],
        ce_spliced=ce["spliced"],
        ce_ablated=ce["ablated"],
        ce_score=score(ce["ablated"], ce["spliced"]),
        n_tokens=count,
    )

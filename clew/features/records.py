"""A finished collection's state turned into the store's per-feature records, with each feature's
direct effects on the logits (read from its decoders, once per feature, at the end)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from clew.dictionaries import Transcoder
from clew.features.config import CollectConfig
from clew.features.state import LayerState
from clew.features.store import Example, FeatureRecord, rounded_logits
from clew.models import Transformer
from clew.replacement.logit_weights import logit_weights


def feature_records(
    model: Transformer, tc: Transcoder, states: dict[int, LayerState], n_tokens: int, cfg: CollectConfig
) -> list[FeatureRecord]:
    """One :class:`FeatureRecord` per feature of every layer, in order, from its layer's state in ``states``
    after ``n_tokens`` tokens: statistics, histogram, its ``cfg.n_logits`` top and bottom logit
    effects, and its examples (the top contexts, best first, then the random sample by
    decreasing activation)."""
    records = []
    for layer, s in states.items():
        tv, ti, bv, bi = (t.numpy() for t in logit_effects(model, tc, layer, cfg.n_logits))
        a = {n: getattr(s, n).cpu().numpy() for n in LayerState.NAMES}
        for f in range(tc.cfg.n_features):
            n = int(a["n_active"][f])
            examples = []
            for kind, prefix, value in (("top", "top", "top_val"), ("random", "rnd", "rnd_val")):
                ctx, vals = a[f"{prefix}_ctx"][f], a[value][f]
                order = np.argsort(-vals, kind="stable") if kind == "random" else range(len(ctx))
                for j in order:
                    if ctx[j] < 0:
                        continue
                    toks = a[f"{prefix}_tok"][f, j]
                    keep = toks >= 0
                    pos = int(a[f"{prefix}_pos"][f, j])
                    examples.append(
                        Example(
                            kind=kind,
                            context=int(ctx[j]),
                            position=pos,
                            activation=float(vals[j]),
                            peak=min(pos, cfg.before),
                            tokens=toks[keep].tolist(),
                            acts=a[f"{prefix}_act"][f, j][keep].tolist(),
                        )
                    )
            records.append(
                FeatureRecord(
                    layer=layer,
                    feature=f,
                    n_active=n,
                    frequency=n / n_tokens if n_tokens else 0.0,
                    mean=float(a["total"][f]) / n if n else 0.0,
                    act_min=float(a["act_min"][f]) if n else 0.0,
                    act_max=float(a["act_max"][f]),
                    histogram=a["hist"][f].tolist(),
                    top_logits=rounded_logits(zip(ti[f].tolist(), tv[f].tolist())),
                    bottom_logits=rounded_logits(zip(bi[f].tolist(), bv[f].tolist())),
                    examples=examples,
                )
            )
    return records


@torch.inference_mode()
def logit_effects(
    model: Transformer, tc: Transcoder, layer: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The direct effect on the logits of one unit of each feature of ``layer``
    (:func:`~clew.replacement.logit_weights.logit_weights` through the unembedding), centred over the
    vocabulary. Returns top values, top tokens, bottom values, bottom tokens, each ``[F, k]``."""
    total = logit_weights(model, tc, layer)  # [F, d]
    U = model.unembed.weight.float()  # [V, d]
    out: list[list[Tensor]] = [[], [], [], []]
    for i in range(0, total.shape[0], 256):
        logits = total[i : i + 256] @ U.T
        logits = logits - logits.mean(-1, keepdim=True)
        tv, ti = logits.topk(k, dim=-1)
        bv, bi = logits.topk(k, dim=-1, largest=False)
        for j, t in enumerate((tv, ti, bv, bi)):
            out[j].append(t.cpu())
    tv, ti, bv, bi = (torch.cat(parts) for parts in out)
    return tv, ti, bv, bi

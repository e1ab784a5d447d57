"""Random transcoders of every kind for tiny models: enough active features to make every edge type."""

from __future__ import annotations

import torch

from clew.dictionaries.transcoder import Transcoder, TranscoderConfig

KINDS = {
    "plt-jumprelu": dict(kind="plt", activation="jumprelu", read="mlp_in", write="mlp_out"),
    "skip-topk": dict(kind="plt", activation="topk", k=5, skip=True, read="resid_mid", write="resid_delta"),
    "clt-relu": dict(kind="clt", activation="relu", read="mlp_in", write="mlp_out"),
    "clt-jumprelu-resid": dict(kind="clt", activation="jumprelu", read="resid_mid", write="resid_delta"),
}


def random_transcoder(model_cfg, name: str, n_features: int = 24, seed: int = 0) -> Transcoder:
    cfg = TranscoderConfig(
        n_layers=model_cfg.n_layers, d_model=model_cfg.d_model, n_features=n_features, **KINDS[name]
    )
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(seed)
    D = model_cfg.d_model
    with torch.no_grad():
        for pname, p in tc.named_parameters():
            if pname == "threshold":
                p.copy_(0.05 + 0.1 * torch.rand(p.shape, generator=g))
            elif pname.startswith("W_enc"):
                p.copy_(torch.randn(p.shape, generator=g) / D**0.5)
            elif pname.startswith("W_skip"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g) / D**0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    tc.source = f"random-{name}"
    return tc

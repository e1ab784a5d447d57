"""Does the organism represent a city's state, and does a dictionary carry it in state features?

    python examples/state_features.py [DICTIONARY_FOLDER]   # default: the shipped CLT

1. The model: the template "The capital of the state containing {city} is" for every non-capital
   city; the layer-0 and layer-1 MLP outputs at the city's last token, mean-centred; the mean cosine
   between cities of one state and between cities of different states.
2. The dictionary: how many states have a feature at layers 0-1 that fires, at the city's token, on
   the state's cities with precision >= 0.75 and recall >= 0.5 (a "state feature").
"""

from __future__ import annotations

import sys

import torch

TEMPLATE = "The capital of the state containing {} is"


@torch.no_grad()
def main() -> None:
    from clew.assets import ORGANISM
    from clew.organism.world import US_STATES
    from clew.resolve import load_model_and_dictionary

    path = sys.argv[1] if len(sys.argv) > 1 else str(ORGANISM.dictionary_path("clt"))
    model, tc = load_model_and_dictionary(ORGANISM.name, path)
    rows = [(city, state.name) for state in US_STATES for city in state.cities]
    outputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    active: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for city, _ in rows:
        ids = torch.tensor([model.tokenizer(TEMPLATE.format(city))["input_ids"]])
        run = model.run(ids, record=True)
        at = ids.shape[1] - 2
        for layer in (0, 1):
            outputs[layer].append(run.cache.mlp_delta[layer][0, at])
            x = run.cache.read(tc.cfg.read, layer)[0, at : at + 1].to(tc.dtype)
            active[layer].append(tc.encode(layer, x)[0] > 0)
    states = [s for _, s in rows]
    same = torch.tensor([[a == b for b in states] for a in states])
    eye = torch.eye(len(states), dtype=torch.bool)
    for layer in (0, 1):
        X = torch.stack(outputs[layer]).float()
        X = X - X.mean(0)
        X = X / X.norm(dim=1, keepdim=True)
        S = X @ X.T
        print(
            f"layer {layer} MLP output at the city ({len(rows)} cities): mean cosine within a state "
            f"{float(S[same & ~eye].mean()):.2f}, between states {float(S[~same].mean()):.2f}"
        )
    found = set()
    for layer in (0, 1):
        A = torch.stack(active[layer])  # (cities, features)
        for state in set(states):
            mine = torch.tensor([s == state for s in states])
            tp = (A & mine[:, None]).sum(0).float()
            fp = (A & ~mine[:, None]).sum(0).float()
            if bool(((tp / (tp + fp).clamp_min(1) >= 0.75) & (tp / mine.sum() >= 0.5)).any()):
                found.add(state)
    print(f"{path}: {len(found)} of {len(set(states))} states have a state feature at layers 0-1")


if __name__ == "__main__":
    main()

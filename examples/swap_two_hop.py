"""Swapping states in the organism's two-hop prompts: ten pairs of cities, corpus and held-out ones.

    python examples/swap_two_hop.py [--k 10 20 40] [--draws 3]

For each pair (city A of one state, city B of another), the features that carry A's answer and B's
are found from the two prompts' graphs (``clew.intervene.swap``); A's are zeroed and B's put in at
the aligned positions, in A's free run. A pair counts when the model, swapped, answers B's capital.
Every pair is printed, with the clean answer, the ablation, the swap and the strongest of the matched
random controls (the lowest p(A) among ablation controls, the highest p(B) among swap controls).
"""

from __future__ import annotations

import argparse

from clew.assets import ORGANISM
from clew.intervene.swap import first_token, specific_effect, swap_experiment
from clew.organism import world
from clew.organism.corpus import Split
from clew.resolve import load_model_and_dictionary

TEMPLATE = "The capital of the state containing {} is"


def pairs() -> list[tuple[str, world.State, str, world.State, str]]:
    """Ten (city A, state A, city B, state B, split of A) pairs over twenty different states, A's city from
    the corpus's two-hop cities for the first five pairs and from the held-out ones for the last five."""
    split = Split.from_seed(0)
    train = [(c, s) for c, s in split.two_hop_cities("train")]
    held = [(c, s) for c, s in split.two_hop_cities("heldout")]
    out, used = [], set()
    for i in range(10):
        source = train if i < 5 else held
        a_city, a_state = next(
            (c, s) for c, s in source[i * 7 % len(source) :] + source if s.name not in used
        )
        used.add(a_state.name)
        b_city, b_state = next(
            (c, s) for c, s in train[(i * 11 + 3) % len(train) :] + train if s.name not in used
        )
        used.add(b_state.name)
        out.append((a_city, a_state, b_city, b_state, "train" if i < 5 else "held-out"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 40], help="carriers a side")
    p.add_argument("--draws", type=int, default=3, help="random control draws per swap")
    args = p.parse_args()
    model, tc = load_model_and_dictionary(ORGANISM.name, None)
    for k in args.k:
        print(f"\n### top {k} carriers a side\n")
        print(
            "| A (split) | B | clean p(A) | zeroed p(A) | control p(A), lowest | swapped p(B) | control p(B), highest | swapped top token | B's capital? |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---|---|")
        hits = 0
        for a_city, a_state, b_city, b_state, split in pairs():
            answer_a, answer_b = " " + a_state.capital, " " + b_state.capital
            report = swap_experiment(
                model,
                tc,
                TEMPLATE.format(a_city),
                TEMPLATE.format(b_city),
                answer_a,
                answer_b,
                k=k,
                draws=args.draws,
            )
            e = specific_effect(report)
            swapped = report.rows[2]
            hit = model.tokenizer.encode(swapped.top, add_special_tokens=False)[:1] == [
                first_token(model, answer_b)
            ]
            hits += hit
            print(
                f"| {a_city}, {a_state.name} ({split}) | {b_city}, {b_state.name} | {e['clean_p_a']:.3f} | "
                f"{e['ablated_p_a']:.3f} | {e['control_ablated_p_a_min']:.3f} | {e['swapped_p_b']:.3f} | "
                f"{e['control_swapped_p_b_max']:.3f} | {swapped.top!r} | {'yes' if hit else 'no'} |"
            )
        print(f"\nswapped to B's capital: {hits} of 10")


if __name__ == "__main__":
    main()

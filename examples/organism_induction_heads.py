"""The organism's induction heads, found as `clew heads --text` finds them, and what ablating them does
to its planted induction task.

    python examples/organism_induction_heads.py

The same from the command line (the copying measured there is on the stories, not the task):

    clew organism text --kind induction -n 300 -o stories.txt
    clew heads --model organism --text stories.txt

On repeated random tokens the organism shows no induction (scores about 0.01): its corpus only ever
asks it to copy invented surnames, so its induction heads work on text of that kind, not on random
token strings. On its own stories, where a surname recurs after "Mr", they stand out.
"""

import random

from clew.assets import ORGANISM, build_info
from clew.heads import ablate_heads, score_heads
from clew.models import load_model
from clew.organism import corpus, examine, greedy_judge, probes

model = load_model("organism")
seed = build_info(ORGANISM.model_path()).get("seed", 0)
writer = corpus.Writer(
    corpus.Split.from_seed(seed), random.Random("clew-organism-text-0"), corpus.Mix.only("induction")
)
stories = "\n".join(writer.document() for _ in range(300))

scores, seqs = score_heads(model, n_seqs=8, text=stories)
top = [(layer, head) for layer, head, _ in scores.top("induction", 3)]
print("top induction heads on the organism's stories (layer.head score):")
print("  " + ", ".join(f"{l}.{h} {s:.3f}" for l, h, s in scores.top("induction", 5)))

task = [p for p in probes(seed, 200) if p.task == "induction"]


def accuracy() -> str:
    by_split = examine(greedy_judge(model, model.tokenizer), task).summary()["induction"]
    return ", ".join(f"{split} {value:.1%}" for split, value in by_split.items())


print(f"induction task accuracy: {accuracy()}")
with ablate_heads(model, top):
    print(f"  without the top 3 ({', '.join(f'{l}.{h}' for l, h in top)}): {accuracy()}")
L, H = model.cfg.n_layers, model.cfg.n_heads
control = random.Random(0).sample([(l, h) for l in range(L) for h in range(H) if (l, h) not in top], 3)
with ablate_heads(model, control):
    print(f"  without 3 random other heads ({', '.join(f'{l}.{h}' for l, h in control)}): {accuracy()}")

"""The organism's induction heads, found on its own induction probes, and what ablating them does.

    python examples/organism_induction_heads.py

On repeated *random* tokens (what `clew heads` uses) the organism shows no induction (scores about
0.01): random sequences of its 2,503-token vocabulary are far from anything it was trained on. On its
own induction probes ("... Ms Morsor ... Mr" -> the surname seen earlier) three heads carry it.
"""

import random

import torch

from clew.heads.ablation import ablate_heads
from clew.models import load_model
from clew.organism import evaluate, greedy_judge, probes

model = load_model("organism")
tok = model.tokenizer
ps = [p for p in probes(0, 200) if p.task == "induction" and p.split == "train"][:100]
L, H = model.cfg.n_layers, model.cfg.n_heads
score = torch.zeros(L, H)
n = 0
with torch.no_grad():
    for p in ps:
        ids = tok(p.prompt)["input_ids"]
        ans = tok(p.prompt + p.answer)["input_ids"][len(ids)]
        # earlier positions whose previous token equals the last token and which hold the answer's first token
        last = ids[-1]
        targets = [i for i in range(1, len(ids)) if ids[i - 1] == last and ids[i] == ans]
        if not targets:
            continue
        cache = model.run(torch.tensor([ids]), record=True).cache
        for l in range(L):
            score[l] += cache.patterns[l][0, :, -1, targets].sum(-1)
        n += 1
score /= max(n, 1)
flat = score.flatten().argsort(descending=True)[:3]
top = [(int(i) // H, int(i) % H) for i in flat]
print(
    f"{n} probes; induction score (attention from the last token to the token after its earlier occurrence):"
)
print("top heads:", [(l, h, round(float(score[l, h]), 3)) for l, h in top])
test = [p for p in probes(0, 200) if p.task == "induction"]


def acc() -> dict:
    return evaluate(greedy_judge(model, tok), test).summary()["induction"]


print("clean:", acc())
with ablate_heads(model, top):
    print("top-3 ablated:", acc())
rng = random.Random(0)
ctrl = rng.sample([(l, h) for l in range(L) for h in range(H) if (l, h) not in top], 3)
with ablate_heads(model, ctrl):
    print("3 random ablated", ctrl, acc())

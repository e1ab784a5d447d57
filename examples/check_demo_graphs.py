"""Predicted against measured: every demo graph's claims tested by zeroing its features.

    python examples/check_demo_graphs.py

For each of ``clew demo``'s prompts (the Dallas two-hop prompt and one held-out probe of every other
task), the graph is traced and ``clew.intervene.check_claims`` zeroes its five most influential
features one by one, its twenty most influential together, and all features of each of its three most
influential positions, printing the predicted and measured changes of each logit target.
"""

from __future__ import annotations

from clew.assets import ORGANISM
from clew.attribution import trace
from clew.commands.demo import demo_prompts
from clew.intervene.check import check_claims, groups_by_influence
from clew.resolve import load_model_and_dictionary

model, tc = load_model_and_dictionary(ORGANISM.name, None)
for task, prompt in demo_prompts():
    graph = trace(model, tc, prompt, progress=False)
    report = check_claims(model, tc, graph, groups_by_influence(graph))
    print(f"\n### {task}: `{prompt}`\n")
    print(report.markdown())

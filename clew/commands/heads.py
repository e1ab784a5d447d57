"""``clew heads --model M``: score every attention head's motif and ablate the induction heads."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
scores (each in [0, 1], measured on BOS + R random tokens + the same R tokens again; the R tokens are
sampled from the model itself, no token twice, unless --source uniform; or on windows of --text FILE):
  previous_token   mean attention from position i to i - 1
  duplicate_token  attention from a token's second occurrence to its first
  induction        attention from a token's second occurrence to the token after its first
  copying          fraction of the eigenvalue mass of the head's OV circuit (embedding -> logits) that is positive

examples:
  clew heads --model organism
  clew heads --model smollm2-135m --source uniform
  clew heads --model ./my-model --text book.txt --length 200
  clew heads --model smollm2-135m --length 40 --ablate-top 4 --out heads-smollm2
  clew heads --model ./my-model --ablate 5.1 --ablate 6.9
  clew heads --model organism --graph graphs/dallas.safetensors --edge 12 "logit ' Austin'"
  clew organism build --out run --steps 1200 --checkpoint-every 50 --no-dictionaries
  clew heads --checkpoints run --text stories.txt      # induction heads forming during training

writes OUT/<score>.svg, one layer x head heat map per score.

With --graph and --edge SOURCE TARGET (node numbers, or labels as the graph describes its nodes, e.g.
"L1/F3@4", "token ' Dallas'@5", "logit ' Austin'"), splits that edge's weight exactly across the
heads through which its paths last arrive at the target's position instead."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heads",
        help="find previous-token, duplicate-token, induction and copying heads",
        description="Score every attention head of a model on repeated random token sequences (or on a "
        "text), print the "
        "top heads per score, draw a heat map per score, and measure how much in-context copying drops "
        "when the top induction heads (or the given heads) are zero-ablated.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-m", help="a local folder, a .gguf file, a hub id or a built-in name")
    p.add_argument("--sequences", type=int, default=8, help="random sequences (default: %(default)s)")
    p.add_argument(
        "--length", type=int, help="random tokens per repeat (default: 50, or what fits the context)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the sequences (default: %(default)s)")
    p.add_argument(
        "--source",
        choices=("model", "uniform"),
        default="model",
        help="where the random tokens come from: sampled from the model (its own kind of text, no token "
        "twice) or uniformly from the vocabulary (default: %(default)s)",
    )
    p.add_argument(
        "--text",
        metavar="FILE",
        help="score on windows of this text instead, at the places where a token recurs with the same "
        "next token (--length tokens per window, --sequences windows)",
    )
    p.add_argument("--top", type=int, default=5, help="heads listed per score (default: %(default)s)")
    p.add_argument("--out", "-o", default="heads", help="folder for the heat maps (default: %(default)s)")
    p.add_argument(
        "--ablate-top",
        type=int,
        default=3,
        metavar="N",
        help="zero the N top induction heads, and N random other heads as a control (default: %(default)s)",
    )
    p.add_argument("--ablate", action="append", metavar="L.H", help="zero this head instead (repeatable)")
    p.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="score a series of saved models instead (DIR/step-NNNNN/, as `clew organism build "
        "--checkpoint-every N` keeps them) on --text: induction and previous-token scores and in-context "
        "learning against the training step, drawn as OUT/phases.svg",
    )
    p.add_argument("--graph", help="a graph file from clew trace, to split one of its edges across heads")
    p.add_argument("--edge", nargs=2, metavar=("SOURCE", "TARGET"), help="the edge to split (with --graph)")
    p.add_argument(
        "--dictionary", "-d", help="the graph's transcoders (with --graph; default: the model's own)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=run)


def _load(name: str, device: str | None):
    """The model with its tokenizer, or without one when its folder has none (random ids need none)."""
    from clew.errors import ClewError
    from clew.models import load_model

    try:
        return load_model(name, device=device)
    except ClewError as err:
        if "cannot load the tokenizer" not in str(err):
            raise
        return load_model(name, device=device, tokenizer=False)


def _names(heads) -> str:
    return ", ".join(f"{layer}.{head}" for layer, head in heads)


def run(args: argparse.Namespace) -> int:
    import torch

    from clew.errors import ClewError
    from clew.heads import SCORES, ablation_effect, parse_head, score_heads, write_heatmaps
    from clew.heads.motifs import TextSequences

    if args.checkpoints:
        return run_phases(args)
    if args.graph or args.edge:
        return run_split(args)
    if not args.model:
        raise ClewError("--model is needed (or --checkpoints DIR, or --graph FILE)")
    if args.top < 1:
        raise ClewError(f"--top must be positive, got {args.top}")
    if args.ablate_top < 0:
        raise ClewError(f"--ablate-top must be zero or more, got {args.ablate_top}")
    if args.sequences < 1:
        raise ClewError(f"--sequences must be positive, got {args.sequences}")
    if args.length is not None and args.length < 2:
        raise ClewError(f"--length must be at least 2, got {args.length}")
    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ClewError(f"cannot read --text {args.text}: {err}") from None
    model = _load(args.model, args.device)
    cfg = model.cfg
    scores, seqs = score_heads(model, args.sequences, args.length, args.seed, args.source, text)
    bos = "BOS + " if seqs.offset else ""
    if isinstance(seqs, TextSequences):
        n_query = int(seqs.masks()[0].sum())
        what = (
            f"{len(seqs.tokens)} windows of {bos}{seqs.tokens.shape[1] - seqs.offset} tokens of {args.text}, "
            f"{n_query} places where a token recurs with the same next token"
        )
        where = "at those places"
    else:
        kind = "sampled from the model" if args.source == "model" else "uniformly random"
        what = f"{len(seqs.tokens)} sequences of {bos}{seqs.length} tokens {kind}, repeated"
        where = "on the second repeat"
    print(
        f"model {args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads ({cfg.n_kv_heads} key/value heads); "
        + what
    )
    for name in SCORES:
        top = ", ".join(f"{layer}.{head} {s:.3f}" for layer, head, s in scores.top(name, args.top))
        print(f"top {name.replace('_', '-')} heads (layer.head score): {top}")
    files = write_heatmaps(scores, args.out, Path(str(args.model).rstrip("/")).name)

    chosen = [parse_head(h) for h in args.ablate or []]
    label = "the given heads"
    if not chosen and args.ablate_top:
        n = min(args.ablate_top, cfg.n_layers * cfg.n_heads)
        chosen = [(layer, head) for layer, head, _ in scores.top("induction", n)]
        label = f"the top {n} induction heads"
    if chosen:
        effect = ablation_effect(model, seqs, chosen)
        clean, ablated = effect.clean, effect.ablated
        print(f"in-context copying {where}: accuracy {clean.accuracy:.3f}, loss {clean.loss:.3f} nats")
        print(
            f"  without {label} ({_names(effect.heads)}): accuracy {ablated.accuracy:.3f} "
            f"({ablated.accuracy - clean.accuracy:+.3f}), loss {ablated.loss:.3f}"
        )
        others = [
            (l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads) if (l, h) not in set(chosen)
        ]
        if not args.ablate and others:
            g = torch.Generator().manual_seed(args.seed)
            pick = torch.randperm(len(others), generator=g)[: len(chosen)].tolist()
            control = ablation_effect(model, seqs, [others[i] for i in pick])
            print(
                f"  without {len(pick)} random other heads ({_names(control.heads)}): accuracy "
                f"{control.ablated.accuracy:.3f} ({control.ablated.accuracy - clean.accuracy:+.3f}), "
                f"loss {control.ablated.loss:.3f}"
            )
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def run_phases(args: argparse.Namespace) -> int:
    import json

    from clew.errors import ClewError
    from clew.heads.phases import EARLY, LATE, jumps, phase_figure, score_checkpoints

    if not args.text:
        raise ClewError("--checkpoints needs --text FILE (e.g. from `clew organism text --kind induction`)")
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ClewError(f"cannot read --text {args.text}: {err}") from None
    rows = score_checkpoints(args.checkpoints, text, args.sequences, args.length)
    print(
        f"{len(rows)} checkpoints; in-context learning = loss on each document's last {LATE} tokens minus on "
        f"its tokens {EARLY[0]}-{EARLY[1] - 1}"
    )
    print(f"{'step':>6} {'loss':>7} {'icl':>8}  {'top induction head':<20} {'top previous-token head':<20}")
    for r in rows:
        (il, ih, iv), (pl, ph, pv) = r.top("induction"), r.top("previous_token")
        print(
            f"{r.step:>6} {r.loss:>7.3f} {r.icl:>+8.3f}  {f'{il}.{ih} {iv:.3f}':<20} {f'{pl}.{ph} {pv:.3f}':<20}"
        )
    big = jumps(rows)
    print(
        f"largest jumps between checkpoints: induction score at step {big['induction']}, previous-token score "
        f"at step {big['previous_token']}, in-context learning at step {big['icl']}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = phase_figure(
        rows, out / "phases.svg", f"induction heads across training ({Path(args.checkpoints).name})"
    )
    from clew.files import write_atomic

    write_atomic(out / "phases.json", json.dumps([r.to_dict() for r in rows]) + "\n")
    print(f"wrote {figure}, {out / 'phases.json'}")
    return 0


def find_node(graph, text: str) -> int:
    """A node of the graph from its number or its label (as ``Graph.describe`` writes it)."""
    from clew.errors import ClewError

    if text.strip().lstrip("-").isdigit():
        return int(text)
    matches = [n for n in range(graph.n_nodes) if graph.describe(n) == text.strip()]
    if len(matches) != 1:
        raise ClewError(
            f"no node of the graph is labelled {text!r}: give a node number or a label like "
            f"{graph.describe(0)!r} or {graph.describe(graph.n_nodes - 1)!r}"
        )
    return matches[0]


def run_split(args: argparse.Namespace) -> int:
    from clew.attribution.heads_split import split_graph_edge
    from clew.errors import ClewError
    from clew.resolve import load_graph_and_model

    if not (args.graph and args.edge):
        raise ClewError("splitting an edge needs both --graph FILE and --edge SOURCE TARGET")
    graph, model, dictionary = load_graph_and_model(args.graph, args.model, args.dictionary, args.device)
    source, target = find_node(graph, args.edge[0]), find_node(graph, args.edge[1])
    split = split_graph_edge(model, dictionary, graph, source, target)
    print(f"{graph.describe(source)} -> {graph.describe(target)}")
    print(split.format(args.top))
    return 0

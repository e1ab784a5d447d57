"""``clew qk``: why an attention head attends where it does (QK attribution)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  clew qk "Mr Dorvak met Ms Lin. Later, Mr Dorvak" --model organism --head 2.4
  clew qk graphs/the-capital-of-the-state-containing-dallas-is.safetensors --head 2.4 --key 6
  clew qk "The capital of France is" -m smollm2-135m -d ./tc --head 18.6 --query -1 --key 3 --top 20

Positions count from 0 (the beginning-of-sequence token, where the family adds one); negative
positions count from the end. Without --key, every key the head can see is listed with its attention
weight, and the key it attends to most is explained. The strongest earlier head on each side is then
split into what it read (its value side): for an induction head, the key side is carried by a
previous-token head, which read the features of the token before the key. Pieces are named like graph nodes: L1/F12@6 (a
feature of layer 1, index 12, at position 6), error L0@6, token ' Dallas'@6; and head L1.H3@6 (what
head 3 of layer 1 wrote at position 6), skip L0@6, biases (the residual stream's constants),
query bias / key bias (the projections' constants). Gemma-2's soft-capped scores are explained
before the cap; the capped value is printed beside them."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qk",
        help="explain an attention score by pairs of query-side and key-side features (QK attribution)",
        description="Split one attention head's score between a query and a key position into the exact "
        "contributions of pairs of pieces: the graph's nodes (token embeddings, features, error nodes) on "
        "each side, what earlier heads wrote there, skip paths and biases. Norm scales are frozen at the "
        "clean run, so the pairs sum to the score exactly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", metavar="PROMPT_OR_GRAPH", help="a prompt, or a graph file (.safetensors) from clew trace"
    )
    p.add_argument("--model", "-m", help="the model (default: the graph's; needed with a prompt)")
    p.add_argument("--dictionary", "-d", help="the transcoders (default: the graph's, or the model's own)")
    p.add_argument("--head", required=True, metavar="L.H", help="the head, as layer.head (e.g. 2.4)")
    p.add_argument("--query", type=int, default=-1, help="the query position (default: the last)")
    p.add_argument("--key", type=int, help="the key position (default: the one the head attends to most)")
    p.add_argument("--top", type=int, default=10, help="pairs and pieces to show (default: %(default)s)")
    p.add_argument(
        "--no-expand",
        action="store_true",
        help="do not split the strongest earlier head on each side into what it read",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from clew.attribution.trace import tokenize
    from clew.errors import ClewError
    from clew.heads import parse_head
    from clew.qk import expand_head, qk_attribution
    from clew.replacement import LocalReplacement
    from clew.resolve import load_graph_and_model, load_model_and_dictionary

    layer, head = parse_head(args.head)
    if args.top < 1:
        raise ClewError(f"--top must be positive, got {args.top}")
    if args.source.endswith(".safetensors"):
        graph, model, tc = load_graph_and_model(args.source, args.model, args.dictionary, args.device)
        tokens, strings = graph.tokens, graph.token_strings
    else:
        if not args.model:
            raise ClewError("--model is needed with a prompt (or give a graph file)")
        model, tc = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
        tokens, strings = tokenize(model, args.source)
    local = LocalReplacement(model, tc, tokens.to(model.embed.weight.device))
    P = local.n_pos

    def position(name: str, value: int) -> int:
        if not -P <= value < P:
            raise ClewError(
                f"--{name} {value}: the prompt has {P} tokens (positions 0..{P - 1}, or -1..-{P})"
            )
        return value % P

    query = position("query", args.query)
    if not 0 <= layer < local.n_layers or not 0 <= head < model.cfg.n_heads:
        qk_attribution(
            local, layer, head, query, query
        )  # raises the one-line error naming what is out of range
    pattern = local.cache.patterns[layer][0, head, query].float()
    if args.key is None:
        print(f"head L{layer}.H{head} at query {query} {strings[query]!r} attends to:")
        for k in pattern.argsort(descending=True)[: args.top].tolist():
            if pattern[k] > 0:
                print(f"  {float(pattern[k]):6.3f}  key {k} {strings[k]!r}")
        key = int(pattern.argmax())
        print()
    else:
        key = position("key", args.key)
    result = qk_attribution(local, layer, head, query, key)
    print(
        f"query {query} {strings[query]!r} -> key {key} {strings[key]!r}: attention weight {float(pattern[key]):.3f}"
    )
    print(result.format(args.top))
    for side in ("query", "key"):  # the strongest earlier head on each side: what did it read?
        heads = [(name, v) for name, v in result.top_marginals(side, 10**6) if name.startswith("head ")]
        if heads and not args.no_expand:
            name, value = heads[0]
            print(f"{name} ({side} side, {value:+.4f}) read, through its values:")
            for piece, v in expand_head(local, result, name)[: args.top]:
                print(f"  {v:+9.4f}  {piece}")
    return 0

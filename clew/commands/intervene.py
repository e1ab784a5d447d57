"""``clew intervene``: run a prompt with features changed, see the answer move, generate with it."""

from __future__ import annotations

import argparse

EPILOG = """\
nodes are written as graphs name them:
  L1/F12@6        feature 12 of layer 1 at position 6 (positions count from 0, the BOS included;
                  negative ones from the end)
  L1/F12@6,8      at positions 6 and 8;  L1/F12@6+  at 6 and every later position, generated ones too
  error L1@6      an error node (--mode constrained only);  token@6  a token's embedding

examples:
  clew intervene "The capital of the state containing Dallas is" -m organism --zero L0/F136@7
  clew intervene "The capital of the state containing Dallas is" -m organism --scale L0/F136@7=3 --watch L3/F717@8
  clew intervene "The capital of the state containing Dallas is" -m organism --zero L0/F136@7 --mode constrained
  clew intervene "Mr Dorvak met Ms Lin. Then Mr" -m organism --steer L2@-1+:vector.npy --generate 8
  clew intervene "The capital of the state containing Dallas is" -m organism --swap "The capital of the state containing Los Angeles is" --answers " Austin" " Sacramento"

modes: free (default) runs the real model with its MLPs replaced by the dictionary, every later feature
re-encoded; its error terms are held at their clean values (--errors frozen, default) or recomputed
(--errors live). constrained freezes attention, norms and every other feature at the clean run: only
direct effects act, exactly as the graph's edges say. Steering vectors (.npy, .safetensors with one
tensor, or numbers in a text file) are added to the residual stream entering the layer (L{n_layers}: the
final residual). --swap finds, from the two prompts' graphs, the features that carry each answer and
swaps them, beside matched random controls."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "intervene",
        help="change features (zero, scale, set, steer) and see the answer change",
        description="Run a prompt with some features zeroed, scaled or set, or vectors added to the residual "
        "stream, and print the top next tokens before and after; optionally continue the text with the "
        "interventions applied at every step, or swap the features two prompts' answers rest on.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="the text")
    p.add_argument(
        "--model", "-m", required=True, help="a local folder, a .gguf file, a hub id or a built-in name"
    )
    p.add_argument("--dictionary", "-d", help="the transcoders (default: the model's own)")
    p.add_argument("--zero", action="append", default=[], metavar="NODE", help="zero this node (repeatable)")
    p.add_argument(
        "--scale", action="append", default=[], metavar="NODE=F", help="multiply its activation by F"
    )
    p.add_argument("--set", action="append", default=[], metavar="NODE=V", help="set its activation to V")
    p.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="L@P:FILE",
        help="add the vector in FILE at layer L, position P",
    )
    p.add_argument(
        "--steer-scale", type=float, default=1.0, help="multiply every steering vector (default: 1)"
    )
    p.add_argument(
        "--watch", action="append", default=[], metavar="NODE", help="print this feature before and after"
    )
    p.add_argument(
        "--mode", choices=("free", "constrained"), default="free", help="see below (default: free)"
    )
    p.add_argument("--errors", choices=("frozen", "live"), default="frozen", help="free mode's error terms")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="also continue the text by N tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above: sampled")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--swap", metavar="PROMPT_B", help="swap in the features of this prompt's answer")
    p.add_argument("--answers", nargs=2, metavar=("A", "B"), help="the two answers of --swap")
    p.add_argument("--k", type=int, default=20, help="--swap: features a side (default: %(default)s)")
    p.add_argument("--top", type=int, default=5, help="next tokens shown (default: %(default)s)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clew.attribution.trace import tokenize
    from clew.errors import ClewError
    from clew.intervene import Interventions, generate, intervene, parse_edit, parse_node, parse_steer
    from clew.resolve import load_model_and_dictionary

    if args.generate < 0:
        raise ClewError(f"--generate must be zero or more, got {args.generate}")
    if not args.temperature >= 0 or args.temperature == float("inf"):  # NaN fails too
        raise ClewError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top < 1:
        raise ClewError(f"--top must be positive, got {args.top}")
    if bool(args.swap) != bool(args.answers):
        raise ClewError("--swap PROMPT_B needs --answers A B (and --answers needs --swap)")
    edits = [parse_edit(t, "zero") for t in args.zero]
    edits += [parse_edit(t, "scale") for t in args.scale] + [parse_edit(t, "set") for t in args.set]
    watch = [parse_node(t) for t in args.watch]
    model, tc = load_model_and_dictionary(args.model, args.dictionary, device=args.device)
    if args.swap:
        from clew.intervene.swap import swap_experiment

        if args.k < 1:
            raise ClewError(f"--k must be positive, got {args.k}")
        report = swap_experiment(
            model, tc, args.prompt, args.swap, args.answers[0], args.answers[1], k=args.k
        )
        print(report.markdown())
        return 0
    steers = [parse_steer(t, model.cfg.d_model, args.steer_scale) for t in args.steer]
    interventions = Interventions(edits, steers)
    tokens, _ = tokenize(model, args.prompt)
    outcome = intervene(model, tc, tokens, interventions, mode=args.mode, errors=args.errors, watch=watch)
    print(f"intervening: {interventions.describe()}")
    print(outcome.format(model.tokenizer, args.top))
    if args.generate:
        if args.mode == "constrained":
            raise ClewError("--generate runs the real model: use --mode free")
        decode = (lambda ids: model.tokenizer.decode(ids)) if model.tokenizer is not None else str
        kw = dict(errors=args.errors, temperature=args.temperature, seed=args.seed)
        plain = generate(model, tc, tokens, Interventions(), args.generate, **kw)
        changed = generate(model, tc, tokens, interventions, args.generate, **kw)
        print(f"continued: {decode(plain.tolist())!r}")
        print(f"with the interventions: {decode(changed.tolist())!r}")
    return 0

"""clew's command line: one subcommand per module under ``clew.commands``.

Each module there defines ``register(subparsers)``, which adds its subcommand and sets
``func`` on the parser. User mistakes raise :class:`clew.errors.ClewError`, printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from clew.errors import ClewError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clew",
        description="Circuit tracing for transformer language models: follow the thread of computation "
        "from a prompt's tokens to the model's answer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import clew.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"clew.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ClewError as err:
        print(f"clew: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clew: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

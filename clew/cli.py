"""clew's command line: one subcommand per module under ``clew.commands``.

Each module there defines ``register(subparsers)``, which adds its subcommand and sets
``func`` on the parser. User mistakes raise :class:`clew.errors.ClewError`, printed as one line; so are
argument errors, and any other exception (as one line with a hint to rerun with ``--debug``, which
shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import signal
import sys
import threading
from typing import NoReturn

from clew.errors import ClewError

DEBUG_HINT = "rerun with --debug for the traceback"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def sleep_when_busy() -> bool:
    """On a machine already busy (as many other tasks ready to run right now as this process has CPUs,
    less half a core; the load average would count this tool's own work of the last minute),
    let OpenMP's idle threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``): a spinning
    thread takes the core its partner needs, and on a loaded 2-core machine a full graph then took 5x
    its quiet time instead of 2.3x (``bench/vs_circuit_tracer.py --load 2``). Quiet machines keep the
    default, which is faster there. Must run before torch is imported; a user's own setting wins.
    Returns whether it set the policy."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return False
    load = _runnable_now()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load < cpus - 0.5:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def _runnable_now() -> float:
    """Other tasks ready to run at this moment (``/proc/loadavg``'s fourth field, less this process),
    the median of three looks 5 ms apart (0 where there is no ``/proc``)."""
    import time

    looks = []
    for _ in range(3):
        try:
            with open("/proc/loadavg") as f:
                looks.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0.0
        time.sleep(0.005)
    return float(sorted(looks)[1])


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="clew",
        description="Circuit tracing for transformer language models: follow the thread of computation "
        "from a prompt's tokens to the model's answer.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an unexpected error (accepted anywhere on the line; or CLEW_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import clew.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"clew.commands.{info.name}")
        module.register(sub)
    return parser


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_text(argv: list[str]) -> None:
    """Arguments that are not valid UTF-8 (the shell passed raw bytes) are refused by position."""
    for i, arg in enumerate(argv):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise ClewError(
                f"argument {i + 1} ({arg.encode('utf-8', 'replace')!r}) is not valid UTF-8"
            ) from None


@contextlib.contextmanager
def _terminate_as_exit():
    """While a command runs, SIGTERM unwinds like an interruption, so temporary files are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    sleep_when_busy()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CLEW_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        _check_text(argv)
    except ClewError as err:
        print(f"clew: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or an argument error already printed in one line
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with _terminate_as_exit():
            return int(args.func(args) or 0)
    except ClewError as err:
        print(f"clew: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clew: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of a pipe stopped early (`| head`): nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush stays quiet
        return 0
    except (MemoryError, torch_oom()) as err:
        if debug:
            raise
        print(
            f"clew: error: out of memory ({_one_line(err, 120)}); try a shorter prompt or a smaller budget",
            file=sys.stderr,
        )
        return 1
    except Exception as err:
        if debug:
            raise
        print(
            f"clew: error: unexpected {type(err).__name__}: {_one_line(err, 200)} ({DEBUG_HINT})",
            file=sys.stderr,
        )
        return 1


def torch_oom() -> type[BaseException]:
    """torch's out-of-memory error when torch is loaded (it is not imported only for this)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "OutOfMemoryError", MemoryError) if torch is not None else MemoryError


if __name__ == "__main__":
    sys.exit(main())

"""The Ray driver of a batch run: workers as Ray actors, on a local Ray or on a cluster.

Ray is imported only here and only when a run asks for it (``--ray`` or ``--address``); without Ray
installed that run stops with one line, ``Ray is not installed: pip install clew[ray]``. What this uses
of Ray: ``init``, ``remote`` (each :class:`~clew.batch.run.Worker` becomes an actor of
``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs that Ray never restarts), ``get``, ``wait``,
``kill``, ``shutdown``, and the ``RayActorError`` and ``RayTaskError`` exceptions.

Connecting (:func:`connect`): a Ray already initialised in this process is used as it is. Without an
address a fresh local Ray is started with room for the workers (``address="local"``, so even on a
machine that runs a cluster); with one (``host:port``, ``ray://host:port`` or ``auto``) the cluster
there is joined. ``PYTHONPATH``, when set, goes to the workers in the runtime environment. Before
joining, :func:`reachable` opens a socket to the address (five seconds at most), so that nothing
listening there is one line, ``cannot reach the Ray cluster at ...``, rather than Ray's minutes of
retries; a malformed address is one line too, and so is a failed ``ray.init`` (with a hint about token
authentication when something listens there).

Driving (:func:`drive_ray`): each actor has one prompt in flight. An actor that dies loses only that
prompt, which goes back to the queue (failed once its worker has died ``max_attempts`` times), and a
fresh actor takes the dead one's place; after more than four replacements per worker the run gives up.
A worker that cannot start, or a ``ClewError`` raised on one, is one line. Whether the run ends, fails
or is interrupted, every actor is killed, and ``ray.shutdown`` ends what :func:`connect` began (the
local Ray, or this process's connection to the cluster); a Ray initialised before is left running.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from clew.batch.prompts import PromptSpec
from clew.batch.run import BatchConfig, Hook, RunReport, Worker
from clew.batch.store import GraphStore
from clew.errors import ClewError


def drive_ray(
    store: GraphStore,
    todo: list[PromptSpec],
    config: BatchConfig,
    address: str | None,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    max_attempts: int,
    take: Hook,
    report: RunReport,
    bar: Any,
) -> None:
    """Trace ``todo`` on ``workers`` Ray actors, handing each outcome to ``take`` (the store's writer)."""
    ray = import_ray()
    t = time.perf_counter()
    started_here = connect(ray, address, workers, cpus_per_worker)
    threads = config.threads or max(1, int(cpus_per_worker))
    actor_class = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0)(Worker)
    queue = list(reversed(todo))  # pop() from the end: the file's order
    tries: dict[str, int] = {}
    pool = [actor_class.remote(config, threads) for _ in range(workers)]
    inflight: dict[Any, tuple[Any, PromptSpec]] = {}
    replacements = 0
    try:
        # every worker's identity, also checks that each has loaded: refused stores fail here
        identities = ray.get([a.identity.remote() for a in pool])
        for ident in identities:
            store.claim(ident, config.settings())
        report.startup_seconds = time.perf_counter() - t
        idle = list(pool)
        while queue or inflight:
            while idle and queue:
                actor, spec = idle.pop(), queue.pop()
                inflight[actor.trace.remote(spec)] = (actor, spec)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            actor, spec = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                report.workers_lost += 1
                tries[spec.id] = store.lost(spec.id, f"worker died: {type(err).__name__}")
                if tries[spec.id] >= max_attempts:
                    store.fail(spec.id, f"its worker died {tries[spec.id]} times")
                    report.failed.append((spec.id, "worker died"))
                    bar.update(1)
                else:
                    queue.append(spec)
                replacements += 1
                if replacements > 4 * workers:
                    raise ClewError(
                        f"{replacements} workers died: giving up (the store keeps what is done)"
                    ) from None
                fresh = actor_class.remote(config, threads)
                pool.append(fresh)
                ray.get(fresh.identity.remote())
                idle.append(fresh)
                bar.set_postfix(lost=report.workers_lost)
                continue
            idle.append(actor)
            take(out)
    except ray.exceptions.RayActorError as err:
        raise ClewError(f"a Ray worker could not start: {_reason(err)}") from None
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(getattr(err, "cause", None), ClewError) else None
        if cause is not None:
            raise ClewError(f"on a Ray worker: {cause}") from None
        raise
    finally:  # interrupted (Ctrl-C, a full disk) or done: no worker outlives the run
        for actor in pool:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001  (already dead)
                pass
        if started_here:
            ray.shutdown()


def _reason(err: BaseException) -> str:
    """The one line that says why, out of a Ray error's text (which quotes the worker's traceback)."""
    text = str(err)
    for line in reversed(text.splitlines()):
        if "ClewError: " in line:
            return line.split("ClewError: ", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def import_ray() -> Any:
    """The ``ray`` module, or a ClewError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ClewError("Ray is not installed: pip install clew[ray]") from None
    return ray


def connect(ray: Any, address: str | None, workers: int, cpus_per_worker: float) -> bool:
    """Start a local Ray with room for ``workers`` workers, or join the cluster at ``address``; returns
    whether this call started it (a Ray already initialised in this process is used as it is)."""
    if ray.is_initialized():
        return False
    env = (
        {"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}}
        if os.environ.get("PYTHONPATH")
        else None
    )
    if address:
        reachable(address)
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(
                address="local",  # a fresh local Ray even when this machine runs a cluster (--address auto)
                num_cpus=max(1, int(workers * cpus_per_worker + 0.999)),
                include_dashboard=False,
                runtime_env=env,
                log_to_driver=False,
                logging_level="ERROR",
            )
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        where = address or "a local Ray"
        hint = ""
        if address and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = (
                "; something listens there: if the cluster uses token authentication (Ray's default "
                "since 2.5x), set RAY_AUTH_MODE=token with its token in ~/.ray/auth_token"
            )
        raise ClewError(
            f"cannot reach the Ray cluster at {where} ({' '.join(str(err).split())[:200]}){hint}"
        ) from None
    return True


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when nothing listens at a Ray address (Ray itself retries for minutes)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClewError(f"--address {address!r}: expected host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClewError(f"cannot reach the Ray cluster at {address} ({err.strerror or err})") from None

"""The CLI lets OpenMP's idle threads sleep when the machine is already busy, and only then."""

from __future__ import annotations

import subprocess
import sys
import time

CHECK = (
    "import os, sys; from clew.cli import sleep_when_busy; "
    "print(sleep_when_busy(), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
)
BUSY = "while True: pass"


def _check(env_extra: dict | None = None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env
    ).stdout.strip()


def test_busy_machine_gets_sleeping_threads_and_a_users_setting_wins():
    import os

    cpus = len(os.sched_getaffinity(0))
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(cpus)]
    try:
        time.sleep(0.5)
        assert _check() == "True PASSIVE False"
        assert _check({"OMP_WAIT_POLICY": "ACTIVE"}) == "False ACTIVE False"
    finally:
        for p in busy:
            p.kill()

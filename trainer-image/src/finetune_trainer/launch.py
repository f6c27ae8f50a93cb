"""One process per GPU (or N CPU processes with gloo) for data-parallel training.

A small launcher instead of torchrun's elastic agent: it starts ``WORLD_SIZE`` copies of
``finetune-trainer train`` with the torch.distributed environment (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT), forwards SIGTERM/SIGINT to every rank at once so all of them finish the same
step and write one consistent checkpoint, and waits as long as the ranks need (torchrun's agent
escalates to SIGKILL after a fixed 30 s, which can cut a checkpoint of a large model in half). If
one rank dies, the others are stopped so nothing hangs in a collective.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from finetune_trainer.errors import EXIT_ERROR, EXIT_OOM, EXIT_SUSPENDED

log = logging.getLogger(__name__)

CHILD_ENV = "FTO_LAUNCHED"
KILL_AFTER_FAILURE_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1" or "LOCAL_RANK" in os.environ


def combine(codes: list[int], terminated: bool) -> int:
    """One exit code for the pod from the ranks' codes.

    After a forwarded signal, a rank killed by that signal (negative code: it came in the ~20 ms
    between the rank's exec and its handlers, see stop.py) had not started anything: suspended.
    """
    if terminated:
        codes = [EXIT_SUSPENDED if c in (-signal.SIGTERM, -signal.SIGINT) else c for c in codes]
        if EXIT_SUSPENDED in codes and all(c in (0, EXIT_SUSPENDED, EXIT_ERROR) for c in codes):
            # a rank that stopped at once (before training) left its peers' collective without
            # a partner: their generic error is the same stop, not a failure of its own
            codes = [EXIT_SUSPENDED if c == EXIT_ERROR else c for c in codes]
    if all(c == 0 for c in codes):
        return 0
    if EXIT_OOM in codes:
        return EXIT_OOM
    if terminated and all(c in (0, EXIT_SUSPENDED) for c in codes):
        return EXIT_SUSPENDED
    failed = [c for c in codes if c not in (0, EXIT_SUSPENDED)]
    return failed[0] if failed else EXIT_SUSPENDED


def launch(args: list[str], nprocs: int, *, cuda: bool) -> tuple[int, str]:
    """Run ``finetune-trainer <args>`` on ``nprocs`` ranks; return (exit code, reason line)."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fto-ranks-"))
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    procs: list[subprocess.Popen[bytes]] = []
    terminated = False
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        received.append(signum)
        log.info("signal %d: forwarding to %d ranks", signum, len(procs))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # installed before the first rank starts: a signal while they are being started reaches
    # every rank started so far, and the ones started after it get it right away (below)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    for rank in range(nprocs):
        env = dict(os.environ)
        env.update(
            {
                CHILD_ENV: "1",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nprocs),
                "LOCAL_WORLD_SIZE": str(nprocs),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "FTO_TERMINATION_LOG": str(tmp / f"rank-{rank}"),
            }
        )
        if not cuda:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "finetune_trainer", *args]  # the entry: handlers first
        procs.append(subprocess.Popen(cmd, env=env))
        if received:
            procs[-1].send_signal(received[0])
    log.info(
        "launched %d ranks (%s), master port %d", nprocs, "cuda/nccl" if cuda else "cpu/gloo", port
    )
    try:
        failed_at: float | None = None
        while any(p.poll() is None for p in procs):
            polled = [p.poll() for p in procs]
            if failed_at is None and any(c not in (None, 0, EXIT_SUSPENDED) for c in polled):
                failed_at = time.monotonic()
                log.warning("a rank failed (%s); stopping the others", polled)
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            if failed_at is not None and time.monotonic() - failed_at > KILL_AFTER_FAILURE_S:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [int(p.returncode) for p in procs]
    code = combine(codes, terminated)
    reason = ""
    for rank, c in enumerate(codes):
        if c == code:
            f = tmp / f"rank-{rank}"
            if f.exists():
                reason = f.read_text().strip()
            break
    log.info("ranks exited with %s -> %d", codes, code)
    return code, reason

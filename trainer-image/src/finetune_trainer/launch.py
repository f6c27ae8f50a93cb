"""One process per GPU (or N CPU processes with gloo) for data-parallel training, on one node or
on each of several.

A small launcher instead of torchrun's elastic agent: it starts this node's copies of
``finetune-trainer train`` with the torch.distributed environment (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT; across nodes from the operator's PET_* variables, rendezvous.py), forwards
SIGTERM/SIGINT to every rank at once so all of them finish the same step and write one
consistent checkpoint, and waits as long as the ranks need (torchrun's agent escalates to SIGKILL
after a fixed 30 s, which can cut a checkpoint of a large model in half). Across nodes a signal
reaching one pod stops every rank of every node on the same step (the ranks agree through an
all-reduce, callbacks.SignalCallback), and every rank leaves only after rank 0 marked the
checkpoint complete. If one rank dies, the others on this node are stopped so nothing hangs in a
collective. The ranks' output comes through this process line by line (podlog.relay), so the
pod's log file on the volume has one writer.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from finetune_trainer import podlog
from finetune_trainer.errors import EXIT_ERROR, EXIT_OOM, EXIT_SUSPENDED
from finetune_trainer.rendezvous import Topology

log = logging.getLogger(__name__)

CHILD_ENV = "FTO_LAUNCHED"
KILL_AFTER_FAILURE_S = 60.0
RELAY_DRAIN_S = 5.0  # a rank's child (a dataloader worker) may hold its output open longer


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
    # an explained failure (exit 2..9, 11, 12) over the generic error or signal of the ranks that
    # were stopped because of it
    explained = [c for c in failed if c > EXIT_ERROR]
    return (explained or failed)[0] if failed else EXIT_SUSPENDED


def rank_env(topo: Topology, local_rank: int) -> dict[str, str]:
    """The torch.distributed variables of one rank of this node."""
    return {
        CHILD_ENV: "1",
        "RANK": str(topo.rank(local_rank)),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(topo.world_size),
        "LOCAL_WORLD_SIZE": str(topo.nproc_per_node),
        "GROUP_RANK": str(topo.node_rank),
        "MASTER_ADDR": topo.master_addr,
        "MASTER_PORT": str(topo.master_port),
    }


def launch(args: list[str], topo: Topology, *, cuda: bool) -> tuple[int, str]:
    """Run ``finetune-trainer <args>`` on this node's ranks; return (exit code, reason line)."""
    nprocs = topo.nproc_per_node
    tmp = Path(tempfile.mkdtemp(prefix="fto-ranks-"))
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    procs: list[subprocess.Popen[bytes]] = []
    relays: list[threading.Thread] = []
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
        env.update(rank_env(topo, rank))
        env["FTO_TERMINATION_LOG"] = str(tmp / f"rank-{rank}")
        if not cuda and "OMP_NUM_THREADS" not in os.environ:  # the pod's own choice wins
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, "-m", "finetune_trainer", *args]  # the entry: handlers first
        # stdout and stderr through this process, line by line, into the pod's stderr and its
        # log file on the volume (podlog.py): one writer per file, no half lines interleaved
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        assert proc.stdout is not None
        relays.append(podlog.relay(proc.stdout, sys.stderr.buffer, podlog.current()))
        if received:
            procs[-1].send_signal(received[0])
    log.info(
        "launched ranks %d..%d of %d (%s), master %s:%d",
        topo.rank(0),
        topo.rank(nprocs - 1),
        topo.world_size,
        "cuda/nccl" if cuda else "cpu/gloo",
        topo.master_addr,
        topo.master_port,
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
        for thread in relays:  # a rank's last lines (its error) before the pod's own
            thread.join(timeout=RELAY_DRAIN_S)
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

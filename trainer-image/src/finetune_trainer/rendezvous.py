"""Where this pod sits among the job's nodes, and the bounded waits before training starts.

The operator gives every training pod Kubeflow Trainer v2's torchrun variables (static
rendezvous): ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` (node
0's name under the job's headless Service) and ``PET_MASTER_PORT``. Without them the pod is one
node on its own (127.0.0.1, a free port). Two waits are bounded and fail with exit code 12
(``RendezvousFailed``, retried by the operator): the master's DNS name (node 0's pod must exist
and the Service publish it), and the rendezvous itself (every rank of every node connecting to
node 0's store). Training collectives keep their own, longer timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from finetune_trainer.errors import ConfigError, RendezvousError

log = logging.getLogger(__name__)

LOCAL = "127.0.0.1"
# FTO_RENDEZVOUS_TIMEOUT_S: how long a node waits for the master's name and for every rank
DEFAULT_TIMEOUT_S = 300.0
# collectives after the rendezvous (a barrier while rank 0 writes a large checkpoint)
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Topology:
    """The torch.distributed layout of this pod's ranks."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def rank(self, local_rank: int) -> int:
        return self.node_rank * self.nproc_per_node + local_rank

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as exc:
        raise ConfigError(f"{key}={env[key]!r} is not an integer") from exc


def topology(env: Mapping[str, str], nprocs: int, free_port: Callable[[], int]) -> Topology:
    """The layout from the PET_* variables, or one node of ``nprocs`` ranks without them.

    The plan decides the ranks per node (``nprocs``); a PET_NPROC_PER_NODE that disagrees is a
    ConfigError, as is a node rank outside [0, PET_NNODES)."""
    if "PET_NNODES" not in env:
        return Topology(1, 0, nprocs, LOCAL, free_port())
    missing = [k for k in ("PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT") if k not in env]
    if missing:
        raise ConfigError(f"PET_NNODES is set but {', '.join(missing)} is not")
    nnodes, rank = _int(env, "PET_NNODES"), _int(env, "PET_NODE_RANK")
    port = _int(env, "PET_MASTER_PORT")
    if nnodes < 1 or not 0 <= rank < nnodes:
        raise ConfigError(f"PET_NODE_RANK {rank} is outside 0..{nnodes - 1} (PET_NNODES)")
    if not 0 < port < 65536:
        raise ConfigError(f"PET_MASTER_PORT {port} is not a TCP port")
    per_node = _int(env, "PET_NPROC_PER_NODE") if "PET_NPROC_PER_NODE" in env else nprocs
    if per_node != nprocs:
        raise ConfigError(
            f"PET_NPROC_PER_NODE {per_node} differs from the plan's {nprocs} processes per node"
        )
    return Topology(nnodes, rank, nprocs, env["PET_MASTER_ADDR"], port)


def timeout_s(env: Mapping[str, str]) -> float:
    raw = env.get("FTO_RENDEZVOUS_TIMEOUT_S")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"FTO_RENDEZVOUS_TIMEOUT_S={raw!r} is not a number") from exc
    if value <= 0:
        raise ConfigError(f"FTO_RENDEZVOUS_TIMEOUT_S must be positive, not {raw}")
    return value


def wait_for_name(
    host: str,
    timeout: float,
    *,
    resolve: Callable[[str], Any] = socket.gethostbyname,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Until ``host`` resolves, at most ``timeout`` seconds; else RendezvousError (exit 12).

    Node 0's name appears in DNS once its pod exists and the headless Service lists it
    (publishNotReadyAddresses: before it is ready); a node started first waits for it."""
    deadline = clock() + timeout
    delay = 0.5
    while True:
        try:
            resolve(host)
            return
        except OSError as exc:
            if clock() + delay > deadline:
                raise RendezvousError(
                    f"the master's name {host} did not resolve within {timeout:.0f} s "
                    f"(node 0's pod missing, or no cluster DNS for the headless Service): {exc}"
                ) from exc
            sleep(delay)
            delay = min(delay * 2, 5.0)


def init_process_group(backend: str, env: Mapping[str, str] = os.environ) -> None:
    """Join the job's process group: a store on the master with a bounded rendezvous (every
    rank of every node must connect within the timeout, else RendezvousError), collectives
    with COLLECTIVE_TIMEOUT."""
    import torch.distributed as dist
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    host, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    wait = timeout_s(env)
    try:
        store = TCPStore(
            host,
            port,
            world,
            is_master=rank == 0,
            timeout=timedelta(seconds=wait),
            wait_for_workers=True,
        )
    except (RuntimeError, OSError) as exc:  # DistStoreError is a RuntimeError
        raise RendezvousError(
            f"rank {rank}/{world}: the rendezvous at {host}:{port} did not complete within "
            f"{wait:.0f} s: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    store.set_timeout(COLLECTIVE_TIMEOUT)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )
    log.info("rank %d/%d joined the process group at %s:%d (%s)", rank, world, host, port, backend)

"""The pods of one training attempt as one gang (``resources.nodes`` > 1).

All nodes train together or not at all: the attempt is as far as its least advanced pod, and
fails as soon as any pod fails or disappears while the others run (then every pod of the attempt
is stopped and the next attempt creates them all again, resuming from the newest checkpoint).
``attempt_state`` folds the pods into the one ``PodState`` the phase machine reads, with the
per-node view for ``status.nodes``. With one node it is that pod's state, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle.pods import PodKind, PodState, pod_state

K = PodKind
R = m.Reason

MISSING = "missing"

# which failed pod names the attempt's failure: the cause, not the peers it took down (a peer
# stopped with a checkpoint exits 10, one whose collective broke exits with a generic error)
_CONSEQUENCE: dict[str, int] = {R.PREEMPTED: 3, R.ERROR: 2, R.POD_DELETED: 1}


@dataclass(frozen=True)
class Gang:
    """What the phase machine needs to know about an attempt's pods."""

    state: PodState | None  # None: no pod of the attempt exists
    active: bool  # some pod still runs (or waits to): a stop is not over yet
    nodes: tuple[m.NodeStatus, ...] = ()  # per node; empty for a one-node job
    missing: tuple[str, ...] = ()  # pods not (yet) created


def _node(rank: int, name: str, s: PodState | None) -> m.NodeStatus:
    if s is None:
        return m.NodeStatus(rank=rank, pod=name, state=MISSING)
    reason = s.reason if s.kind not in (K.RUNNING, K.SUCCEEDED) else None
    return m.NodeStatus(
        rank=rank, pod=name, state=str(s.kind), reason=reason, exit_code=s.exit_code
    )


def _earliest(times: list[datetime | None]) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def attempt_state(job: m.FineTuneJob, by_name: dict[str, dict[str, Any]], attempt: int) -> Gang:
    """The attempt's pods folded into one state (see the module docstring)."""
    names = b.train_pod_names(job, attempt)
    states = [pod_state(by_name[n]) if n in by_name else None for n in names]
    present = [s for s in states if s is not None]
    active = any(not s.terminated for s in present)
    if len(names) == 1:
        return Gang(states[0], active)
    nodes = tuple(_node(i, n, s) for i, (n, s) in enumerate(zip(names, states, strict=True)))
    missing = tuple(n for n, s in zip(names, states, strict=True) if s is None)
    gang = Gang(None, active, nodes, missing)
    if not present:
        return gang
    return replace(gang, state=_fold(present, missing))


def _fold(present: list[PodState], missing: tuple[str, ...]) -> PodState:
    started = [s for s in present if s.kind == K.RUNNING or s.terminated]
    failed = [s for s in present if s.kind == K.FAILED]
    if missing and (started or failed):
        # a pod gone while its peers run (killed, evicted and deleted, node lost)
        failed.append(PodState(missing[0], K.FAILED, R.POD_DELETED, "the pod disappeared"))
    if failed:
        return min(
            failed,
            key=lambda s: (
                _CONSEQUENCE.get(str(s.reason), 0),
                s.finished.timestamp() if s.finished else float("inf"),
            ),
        )
    for kind in (K.WAITING_ERROR, K.UNSCHEDULABLE, K.PENDING):
        waiting = [s for s in present if s.kind == kind]
        if waiting:
            return waiting[0]
    if missing:  # the others are created and none has started: the rest is being created
        return PodState(missing[0], K.PENDING, None, "creating the node pods")
    running = [s for s in present if s.kind == K.RUNNING]
    if running:  # some may have finished already: the attempt runs until every node is done
        return replace(running[0], started=_earliest([s.started for s in present]))
    # every node succeeded: the attempt ended with the last of them
    ends = [s.finished for s in present if s.finished is not None]
    return replace(present[0], finished=max(ends) if ends else None)

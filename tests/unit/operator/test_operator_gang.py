"""Multi-node attempts as one gang: every node pod created together, any node failing restarts
them all (one retry), suspend stops all, per-node status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator import lifecycle as st
from finetune_operator import models as m
from finetune_operator.lifecycle.gang import attempt_state
from tests.unit.operator.conftest import derive

P = m.Phase
R = m.Reason
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
FINISHED = datetime(2026, 11, 26, 11, 30, 0, tzinfo=UTC)
TWO = {"resources": {"gpus": 1, "nodes": 2}}
OK_PREPARE: dict[str, Any] = {
    "ok": True,
    "plan": {"strategy": "single", "micro_batch_size": 4, "gradient_accumulation": 1},
    "total_steps": 20,
}
PREPARED = {"plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 1}}
N0, N1 = "bot-1-node-0", "bot-1-node-1"

JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]


def running(make_pod: PodF, name: str, attempt: int = 1) -> dict[str, Any]:
    return make_pod(name, attempt=attempt, phase="Running", running=True)


def test_the_first_attempt_creates_every_node_pod(make_job: JobF) -> None:
    job = make_job(spec=TWO, status={"attempt": 0, "phase": "Preparing", **PREPARED})
    new = derive(job, [], None, OK_PREPARE, NOW)
    assert (new.phase, new.attempt) == (P.STARTING, 1)
    assert st.next_actions(job, new, [], NOW) == st.Actions(create_train=1)


def test_a_node_pod_not_created_yet_is_created_not_counted_as_a_failure(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(spec=TWO, status={"attempt": 1, "phase": "Starting", **PREPARED})
    pods = [make_pod(N0, attempt=1)]  # node 1's create failed (API error) last time
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert (new.phase, new.attempts) == (P.STARTING, [])
    assert st.next_actions(job, new, pods, NOW) == st.Actions(create_train=1)
    assert [(n.pod, n.state) for n in new.nodes or []] == [(N0, "pending"), (N1, "missing")]


def test_running_only_when_every_node_runs_and_status_shows_each(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(spec=TWO, status={"attempt": 1, "phase": "Starting", **PREPARED})
    half = [running(make_pod, N0), make_pod(N1, attempt=1, waiting="ContainerCreating")]
    assert derive(job, half, None, OK_PREPARE, NOW).phase == P.STARTING
    queued = [running(make_pod, N0), make_pod(N1, attempt=1, unschedulable="0/1 nodes")]
    assert derive(job, queued, None, OK_PREPARE, NOW).phase == P.QUEUED
    both = [running(make_pod, N0), running(make_pod, N1)]
    new = derive(job, both, None, OK_PREPARE, NOW)
    assert new.phase == P.RUNNING
    assert new.nodes == [
        m.NodeStatus(rank=0, pod=N0, state="running"),
        m.NodeStatus(rank=1, pod=N1, state="running"),
    ]


def test_one_node_failing_stops_all_and_retries_once(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec=TWO, status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [running(make_pod, N0), make_pod(N1, attempt=1, phase="Failed", exit_code=11)]
    now = FINISHED + timedelta(seconds=1)
    new = derive(job, pods, None, OK_PREPARE, now)
    # the failed node names the attempt's failure; one retry, in backoff
    assert [(a.pod, a.reason) for a in new.attempts] == [(N1, R.CUDA_OOM)]
    assert (new.phase, new.reason, new.attempt) == (P.PENDING, R.BACKOFF, 1)
    # the surviving node is stopped at once, not left running through the backoff
    assert st.next_actions(job, new, pods, now) == st.Actions(delete_pods=(N0,))
    # the backoff over but node 0 still stopping: attempt 2 waits (its pods would otherwise
    # be missing at the next pass and counted as deleted)
    waiting = job.model_copy(update={"status": new})
    late = FINISHED + timedelta(seconds=100)
    held = derive(waiting, pods, None, OK_PREPARE, late)
    assert (held.phase, held.attempt, len(held.attempts)) == (P.PENDING, 1, 1)
    assert st.next_actions(waiting, held, pods, late) == st.Actions(delete_pods=(N0,))
    # once backoff is over and node 0 is gone: attempt 2 creates every node again
    later = job.model_copy(update={"status": new})
    after = FINISHED + timedelta(seconds=100)
    gone = [make_pod(N1, attempt=1, phase="Failed", exit_code=11)]
    again = derive(later, gone, None, OK_PREPARE, after)
    assert (again.phase, again.attempt, len(again.attempts)) == (P.STARTING, 2, 1)
    assert st.next_actions(later, again, gone, after) == st.Actions(create_train=2)


def test_a_killed_node_is_the_cause_not_its_peers_broken_collective(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(spec=TWO, status={"attempt": 1, "phase": "Running", **PREPARED})
    pods = [make_pod(N0, attempt=1, phase="Failed", exit_code=1)]  # node 1 deleted, node 0 Error
    new = derive(job, pods, None, OK_PREPARE, FINISHED + timedelta(seconds=1))
    assert [(a.pod, a.reason) for a in new.attempts] == [(N1, R.POD_DELETED)]
    # a peer stopped with a checkpoint (exit 10) is a consequence too
    peers = [make_pod(N0, attempt=1, phase="Failed", exit_code=10),
             make_pod(N1, attempt=1, phase="Failed", exit_code=12)]  # fmt: skip
    failed = derive(job, peers, None, OK_PREPARE, FINISHED + timedelta(seconds=1))
    assert [(a.pod, a.reason) for a in failed.attempts] == [(N1, R.RENDEZVOUS_FAILED)]


def test_suspend_stops_every_node_and_waits_for_all(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(
        spec={**TWO, "suspend": True}, status={"attempt": 1, "phase": "Running", **PREPARED}
    )
    pods = [running(make_pod, N0), running(make_pod, N1)]
    new = derive(job, pods, None, OK_PREPARE, NOW)
    assert new.phase == P.SUSPENDING
    assert st.next_actions(job, new, pods, NOW) == st.Actions(delete_pods=(N0, N1))
    # node 1 exited after the checkpoint; node 0 still writes the marker: not suspended yet
    stopping = job.model_copy(update={"status": new})
    half = [make_pod(N0, attempt=1, phase="Running", running=True, deleting=True),
            make_pod(N1, attempt=1, phase="Failed", exit_code=10, deleting=True)]  # fmt: skip
    assert derive(stopping, half, None, OK_PREPARE, NOW).phase == P.SUSPENDING
    done = [make_pod(N0, attempt=1, phase="Failed", exit_code=10, deleting=True),
            make_pod(N1, attempt=1, phase="Failed", exit_code=10, deleting=True)]  # fmt: skip
    suspended = derive(stopping, done, None, OK_PREPARE, NOW)
    assert (suspended.phase, [a.reason for a in suspended.attempts]) == (
        P.SUSPENDED,
        [R.SUSPENDED],
    )
    # resume: the next attempt starts every node, no retry counted
    resumed = job.model_copy(update={"status": suspended, "spec": job.spec.model_copy(
        update={"suspend": False})})  # fmt: skip
    nxt = derive(resumed, [], None, OK_PREPARE, NOW)
    assert (nxt.phase, nxt.attempt) == (P.STARTING, 2)
    assert st.next_actions(resumed, nxt, [], NOW) == st.Actions(create_train=2)


def test_succeeded_only_when_every_node_finished(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(spec=TWO, status={"attempt": 1, "phase": "Running", **PREPARED})
    one = [make_pod(N0, attempt=1, phase="Succeeded", exit_code=0), running(make_pod, N1)]
    assert derive(job, one, None, OK_PREPARE, NOW).phase == P.RUNNING
    both = [make_pod(N0, attempt=1, phase="Succeeded", exit_code=0),
            make_pod(N1, attempt=1, phase="Succeeded", exit_code=0)]  # fmt: skip
    new = derive(job, both, None, OK_PREPARE, NOW)
    assert (new.phase, new.nodes) == (P.SUCCEEDED, None)


def test_one_node_job_is_the_pod_itself(make_job: JobF, make_pod: PodF) -> None:
    job = make_job()
    pod = make_pod("bot-1", phase="Failed", exit_code=1)
    gang = attempt_state(job, {"bot-1": pod}, 1)
    assert gang.state is not None and gang.state.name == "bot-1" and gang.nodes == ()
    assert derive(job, [pod], None, OK_PREPARE, NOW).nodes is None


def test_accumulation_counts_every_node(make_job: JobF) -> None:
    job = make_job(
        spec={"resources": {"gpus": 2, "nodes": 2}, "training": {"batchSize": 32}},
        status={"plan": {"microBatchSize": 4}},
    )
    batch = st.batch_for_attempt(job)
    assert batch is not None and (batch.micro_batch_size, batch.gradient_accumulation) == (4, 2)

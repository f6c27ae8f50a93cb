"""End to end with a real Kueue (sigs.k8s.io/kueue, run on the host by the ``kueue`` fixture):
quota for the node's two GPUs in one ClusterQueue, jobs queued through a LocalQueue as Kueue pod
groups, and a higher-priority job preempting a running one, which checkpoints, waits in the queue
and resumes from its checkpoint step.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import VOLUMES
from tests.e2e.test_lifecycle import (
    apply_job,
    conditions,
    events,
    get,
    logs,
    losses,
    step,
    summary,
    wait_phase,
)
from tests.harness import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.kueue]

QUEUE = "gpu"
CLUSTER_QUEUE = "fto-e2e-gpu"
HIGH = "fto-e2e-high"


def quota(ns: str) -> list[dict[str, Any]]:
    """One flavor with the node's 2 GPUs (cpu and memory plentiful), preemption by priority
    within the queue, a LocalQueue in ``ns`` and a PriorityClass that only Kueue acts on."""
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": CLUSTER_QUEUE},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": CLUSTER_QUEUE,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "16"},
                                    {"name": "memory", "nominalQuota": "64Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "2"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": ns},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": HIGH},
            "value": 1000,
            # Kueue preempts; the kube-scheduler must not (the pods are gated until admitted)
            "preemptionPolicy": "Never",
        },
    ]


@pytest.fixture
def kueue_ns(cluster: Cluster, kueue: str, e2e_ns: str) -> str:
    """The test namespace opted in to Kueue's pod integration, with its quota."""
    cluster.kubectl("label", "namespace", e2e_ns, kueue, "--overwrite")
    for obj in quota(e2e_ns):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    return e2e_ns


def pod_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return get(cluster, ns, "pod", name)


@pytest.mark.e2e_ns("kueue")
def test_kueue_queues_by_quota_and_a_preempted_job_resumes_from_its_checkpoint(
    cluster: Cluster, kueue_ns: str
) -> None:
    ns = kueue_ns
    steps = 400  # a tiny step takes 0.1-0.5 s: the job still trains when the others arrive
    apply_job(cluster, ns, "low", steps=steps, gpus=2, every=10, queueName=QUEUE)
    wait_phase(cluster, ns, "low", "Running", timeout=240, extra=lambda s: step(s) >= 1)
    admitted = pod_of(cluster, ns, "low-1")
    assert admitted["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "low-1"
    assert admitted["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    assert not admitted["spec"].get("schedulingGates")

    # the quota holds one 2-GPU job: a second one waits, gated by Kueue, with Kueue's reason; a
    # higher-priority one makes Kueue evict the running job to admit it (both are applied now:
    # each spends its first half minute in the prepare stage, which is never queued)
    apply_job(cluster, ns, "waiting", steps=4, gpus=2, every=2, queueName=QUEUE)
    apply_job(
        cluster, ns, "urgent", steps=4, gpus=2, every=2, queueName=QUEUE,
        podTemplate={"priorityClassName": HIGH},
    )  # fmt: skip
    queued = wait_phase(
        cluster, ns, "waiting", "Queued", timeout=180,
        # the message quotes the Workload once the operator has read it
        extra=lambda s: "not admitted it yet" not in (s.get("message") or "not admitted it yet"),
    )  # fmt: skip
    assert queued["reason"] == "WaitingForAdmission"
    assert "nvidia.com/gpu" in queued["message"], queued["message"]
    assert conditions(queued)["Ready"] == "True"
    gates = pod_of(cluster, ns, "waiting-1")["spec"].get("schedulingGates") or []
    assert {"name": "kueue.x-k8s.io/admission"} in gates
    # the prepare stage ran without a queue: its pod is no Kueue workload
    prepare = pod_of(cluster, ns, "waiting-prepare")["metadata"]["labels"]
    assert not [k for k in prepare if k.startswith("kueue.x-k8s.io/")]

    preempted = wait_phase(
        cluster, ns, "low", "Queued", timeout=180,
        extra=lambda s: s.get("reason") == "Preempted" and len(s.get("attempts") or []) == 1,
    )  # fmt: skip
    evicted = preempted["attempts"][0]
    assert evicted["reason"] == "WorkloadEvicted", evicted
    assert evicted["exitCode"] == 10  # checkpointed on SIGTERM, then exited
    assert evicted["message"].startswith("Preempted to accommodate a workload"), evicted
    assert preempted["attempt"] == 2  # the next attempt waits, gated, as a new pod group
    ckpt = preempted["checkpoint"]["step"]
    assert 10 <= ckpt < steps
    ckpt_dir = VOLUMES / f"{ns}-out" / "low" / "checkpoints" / f"checkpoint-{ckpt}"
    assert (ckpt_dir / "COMPLETE").exists(), sorted(p.name for p in ckpt_dir.parent.iterdir())

    wait_phase(cluster, ns, "urgent", "Succeeded", timeout=240)
    wait_phase(cluster, ns, "waiting", "Succeeded", timeout=240)
    done = wait_phase(cluster, ns, "low", "Succeeded", timeout=480)
    # an eviction is no failure: no retry counted, the job went on from its checkpoint
    assert [a["reason"] for a in done["attempts"]] == ["WorkloadEvicted", "Completed"]
    resumed = summary(ns, "low")
    assert resumed["resumed_from"] == f"checkpoint-{ckpt}"
    assert [s for s, _ in losses(resumed)] == list(range(1, steps + 1))
    assert f"checkpoint-{ckpt}" in logs(cluster, ns, "low-2")
    assert "Preempted" in events(cluster, ns, "low")

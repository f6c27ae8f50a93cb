"""Kueue's plain-pod integration as the operator sees it (pure; docs/kueue.md).

A job with ``spec.queueName`` puts every training pod of an attempt into one Kueue pod group
(``<job>-<attempt>``). Kueue gates the pods (``schedulingGates``) until the group's Workload is
admitted against the queue's quota, and evicts an admitted group by marking each pod with the
condition ``TerminationTarget`` (reason ``WorkloadEvicted``) and deleting it. This module names
those labels, reads those marks and turns Kueue's messages into status text; it makes no API call.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import models as m

GROUP = "kueue.x-k8s.io"
LABEL_QUEUE = f"{GROUP}/queue-name"
LABEL_POD_GROUP = f"{GROUP}/pod-group-name"
ANNOTATION_GROUP_TOTAL = f"{GROUP}/pod-group-total-count"
# "false": the group is finished once all its pods ended. Kueue otherwise keeps a group whose pods
# failed or were evicted waiting for replacement pods, and a readmitted empty group would hold the
# quota; the operator never replaces a pod within a group (the next attempt is a new group).
ANNOTATION_RETRIABLE = f"{GROUP}/retriable-in-group"
ADMISSION_GATE = f"{GROUP}/admission"
TERMINATION_TARGET = "TerminationTarget"
EVICTED = "WorkloadEvicted"
WORKLOAD_API_VERSION = f"{GROUP}/v1beta2"

# the start of Kueue's eviction messages (v0.17 pkg/scheduler/preemption, workload_controller)
# → the Workload's eviction reason; anything else counts as plain WorkloadEvicted
_CAUSES = (
    ("Preempted", "Preempted"),
    ("Exceeded the PodsReady timeout", "PodsReadyTimeout"),
    ("The ClusterQueue is stopped", "ClusterQueueStopped"),
    ("The LocalQueue is stopped", "LocalQueueStopped"),
    ("The workload is deactivated", "Deactivated"),
)


def queue_name(job: m.FineTuneJob) -> str | None:
    """The LocalQueue of the training pods: ``spec.queueName``, else a queue label the author
    put in ``podTemplate.labels`` (allowed before spec.queueName existed)."""
    if job.spec.queue_name:
        return job.spec.queue_name
    tpl = job.spec.pod_template
    return tpl.labels.get(LABEL_QUEUE) if tpl is not None else None


def pod_group_name(job: m.FineTuneJob, attempt: int) -> str:
    """One Kueue pod group (and Workload of that name) per training attempt."""
    return f"{job.name}-{attempt}"


def group_metadata(job: m.FineTuneJob, attempt: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that put a training pod of ``attempt`` into its queue's pod group;
    both empty without a queue."""
    queue = queue_name(job)
    if queue is None:
        return {}, {}
    labels = {LABEL_QUEUE: queue, LABEL_POD_GROUP: pod_group_name(job, attempt)}
    annotations = {
        ANNOTATION_GROUP_TOTAL: str(m.training_pod_count(job.spec)),  # one pod per node
        ANNOTATION_RETRIABLE: "false",
    }
    return labels, annotations


def gated(pod: dict[str, Any]) -> bool:
    """Whether Kueue still holds the pod back (its admission scheduling gate is on)."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(isinstance(g, dict) and g.get("name") == ADMISSION_GATE for g in gates)


def eviction(pod: dict[str, Any]) -> str | None:
    """Kueue's message when it evicted the pod's Workload (condition TerminationTarget, reason
    WorkloadEvicted; v0.17 names the cause too: WorkloadEvictedDueToPreempted…), else None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == TERMINATION_TARGET
            and cond.get("status") == "True"
            and str(cond.get("reason") or "").startswith(EVICTED)
        ):
            return str(cond.get("message") or "evicted by Kueue")
    return None


def eviction_cause(message: str | None) -> str:
    """The Workload's eviction reason told by Kueue's message (Preempted, PodsReadyTimeout…)."""
    text = (message or "").strip()
    for prefix, cause in _CAUSES:
        if text.startswith(prefix):
            return cause
    return EVICTED


def admission_message(workload: dict[str, Any] | None) -> str | None:
    """Why a Workload is not admitted yet, from its conditions (QuotaReserved=False says which
    quota is short, Admitted=False what else it waits for); None when unknown."""
    if not workload:
        return None
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    for kind in ("QuotaReserved", "Admitted"):
        cond = conds.get(kind)
        if cond and cond.get("status") == "False" and cond.get("message"):
            return str(cond["message"])
    return None

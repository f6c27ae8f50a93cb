"""Logs of pods that are gone, from the job's work volume (pure: choices, manifests, parsing).

Every trainer pod keeps its log lines in ``<work>/logs/<job uid>/<pod>.log`` on the job's claim
(the trainer's podlog.py). The plugin runs as the user and cannot mount a volume, so it reads
them, least privilege first (docs/kubectl-plugin.md):

1. ``kubectl exec`` of ``finetune-trainer read-logs`` in a running pod of the job (it mounts the
   volume already), when the user may create ``pods/exec``;
2. else a short-lived reader pod: the trainer image the job's pods ran, the trainer's
   non-root restricted securityContext, only the work volume, mounted read-only, no
   ServiceAccount token, owned by the job (collected with it), deleted once read; when the user
   may create ``pods``;
3. else nothing is read: the plugin names the claim and the path of each file and says why.

The I/O (access checks, exec, the pod's life) is diagnose.py's; here only decisions and shapes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from finetune_operator import builders as b
from finetune_operator import models as m

READER_DEADLINE_S = 120  # the reader pod's activeDeadlineSeconds; the plugin waits as long
# what a reader pod prints, in all: the kubelet rotates a container's log at 10 MiB by default and
# `logs` returns the newest file only (exec streams have no such limit)
READER_MAX_BYTES = 6 * 2**20
READER_LABEL = f"{m.GROUP}/log-reader-of"  # not LABEL_JOB: the operator must not count it
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubectl-finetune"}

Method = Literal["exec", "reader"]
# why a way was left out (printed, joined with "; ")
NO_RUNNING = "no running pod of the job mounts the volume"
NO_EXEC = "you may not exec into pods (pods/exec create)"
NO_PODS = "you may not create and delete pods (for a reader pod)"
NO_IMAGE = "no pod of the job is left to take the trainer image from"


@dataclass(frozen=True)
class Location:
    """Where a job's pod logs are: on ``claim`` under ``path``; ``directory`` inside a pod."""

    claim: str
    path: str
    directory: str

    def files(self, pod: str) -> str:
        """The user-facing name of one pod's file, for the message when nothing could read it."""
        return f"claim {self.claim}, {self.path}/{pod}.log (older part: {pod}.log.1)"


def locate(job: Mapping[str, Any]) -> Location | None:
    """The log directory of the job's current run; None when the job cannot be read as one."""
    try:
        parsed = m.parse_job(dict(job))
    except ValidationError:
        return None
    work = b.work_dir(parsed.status.run)  # /workspace or /workspace/runs/<n>
    sub = f"logs/{parsed.uid}" if parsed.uid else "logs"
    inside = work.removeprefix(b.WORK_DIR).strip("/")
    path = "/".join(p for p in (parsed.name, inside, sub) if p)
    return Location(claim=b.output_pvc_name(parsed), path=path, directory=f"{work}/{sub}")


@dataclass(frozen=True)
class Access:
    """What the user may do in the job's namespace (SelfSubjectAccessReview answers)."""

    exec_pods: bool
    create_pods: bool


@dataclass(frozen=True)
class Plan:
    """The ways to try, in order, and why the others were left out."""

    steps: tuple[tuple[Method, str], ...]  # (method, pod to exec into | image of the reader)
    skipped: tuple[str, ...] = field(default=())


def _running(pod: Mapping[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod.get("status") or {}).get("phase") == "Running" and any(
        s.get("name") == b.CONTAINER and "running" in (s.get("state") or {}) for s in statuses
    )


def _mounts_claim(pod: Mapping[str, Any], claim: str) -> bool:
    spec = pod.get("spec") or {}
    names = {
        v.get("name")
        for v in spec.get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
    }
    return any(
        mount.get("name") in names and mount.get("mountPath") == b.WORK_DIR
        for c in spec.get("containers") or []
        if c.get("name") == b.CONTAINER
        for mount in c.get("volumeMounts") or []
    )


def trainer_image(pods: Sequence[Mapping[str, Any]], job: Mapping[str, Any]) -> str | None:
    """The image the job's pods ran (newest pod first), else the job's ``spec.image``."""
    for pod in reversed(pods):
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c.get("name") == b.CONTAINER and c.get("image"):
                return str(c["image"])
    image = (job.get("spec") or {}).get("image")
    return str(image) if image else None


def plan(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], where: Location, access: Access
) -> Plan:
    """How to read the volume: exec into a running pod of the job that mounts the claim, else a
    reader pod, else nothing (the reasons say why)."""
    steps: list[tuple[Method, str]] = []
    skipped: list[str] = []
    running = [p for p in pods if _running(p) and _mounts_claim(p, where.claim)]
    if not running:
        skipped.append(NO_RUNNING)
    elif not access.exec_pods:
        skipped.append(NO_EXEC)
    else:
        steps.append(("exec", str(running[-1]["metadata"]["name"])))
    image = trainer_image(pods, job)
    if not access.create_pods:
        skipped.append(NO_PODS)
    elif image is None:
        skipped.append(NO_IMAGE)
    else:
        steps.append(("reader", image))
    return Plan(tuple(steps), tuple(skipped))


def read_command(where: Location, pods: Sequence[str], max_bytes: int | None) -> list[str]:
    """The trainer's ``read-logs`` for these pods (JSON lines on stdout)."""
    cmd = ["finetune-trainer", "read-logs", "--dir", where.directory]
    if max_bytes is not None:
        cmd += ["--max-bytes", str(max_bytes)]
    return [*cmd, *pods]


def reader_bytes(max_bytes: int | None, pods: int) -> int:
    """The ``--max-bytes`` of a reader pod: the caller's, within READER_MAX_BYTES in all."""
    share = READER_MAX_BYTES // max(pods, 1)
    return share if max_bytes is None else min(max_bytes, share)


def reader_name(job_name: str, token: str | None = None) -> str:
    return f"{job_name}-logs-{token or secrets.token_hex(3)}"


def reader_pod(
    job: Mapping[str, Any],
    where: Location,
    image: str,
    command: list[str],
    name: str,
) -> dict[str, Any]:
    """The reader pod: the volume read-only, as the trainer's non-root user, no token, owned by
    the job (garbage-collected with it if the plugin is killed before deleting it)."""
    meta = job.get("metadata") or {}
    template = (job.get("spec") or {}).get("podTemplate") or {}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": READER_DEADLINE_S,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "securityContext": b.pod_security_context(),
        "containers": [
            {
                "name": b.CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "resources": {
                    "requests": {"cpu": "50m", "memory": "128Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "volumeMounts": [
                    {
                        "name": "workspace",
                        "mountPath": b.WORK_DIR,
                        "subPath": str(meta.get("name")),
                        "readOnly": True,
                    }
                ],
                "securityContext": {
                    **b.container_security_context(),
                    "readOnlyRootFilesystem": True,
                },
            }
        ],
        "volumes": [
            {
                "name": "workspace",
                "persistentVolumeClaim": {"claimName": where.claim, "readOnly": True},
            }
        ],
    }
    # where the job's pods may run (a GPU-only pool's taints); the claim's own topology does
    # the rest
    for key in ("nodeSelector", "tolerations", "affinity"):
        if template.get(key):
            spec[key] = template[key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": {**MANAGED_BY, READER_LABEL: str(meta.get("name"))},
            "ownerReferences": [
                {
                    "apiVersion": m.API_VERSION,
                    "kind": m.KIND,
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class Found:
    """One pod's log as read from the volume: its text, or why there is none."""

    text: str = ""
    problem: str | None = None
    skipped: int = 0  # bytes of its beginning left out (a --max-bytes cut)


def parse(output: str, pods: Sequence[str]) -> dict[str, Found]:
    """``read-logs``' JSON lines → pod → Found; a pod the output never named has a problem."""
    texts: dict[str, list[str]] = {}
    problems: dict[str, str] = {}
    skipped: dict[str, int] = {}
    for line in output.splitlines():
        if not line.startswith("{"):
            continue  # anything else a wrapper printed
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        pod = rec.get("pod") if isinstance(rec, dict) else None
        if not isinstance(pod, str) or pod not in pods:
            continue
        if isinstance(rec.get("text"), str):
            texts.setdefault(pod, []).append(rec["text"])
        elif isinstance(rec.get("skipped"), int):
            skipped[pod] = rec["skipped"]
        elif rec.get("missing"):
            problems[pod] = (
                "no log file on the volume (the pod ended before writing one, or its "
                "trainer image predates pod log files)"
            )
        elif rec.get("error"):
            problems[pod] = f"cannot read it: {rec['error']}"
    out: dict[str, Found] = {}
    for pod in pods:
        if pod in texts:
            out[pod] = Found("".join(texts[pod]), problems.get(pod), skipped.get(pod, 0))
        else:
            out[pod] = Found(problem=problems.get(pod, "the reader's output did not name it"))
    return out


def tail_lines(text: str, tail: int | None) -> str:
    """The last ``tail`` lines (all without ``tail``), as ``kubectl logs --tail`` cuts."""
    if tail is None or tail < 0:
        return text
    if tail == 0:
        return ""
    lines = text.splitlines(keepends=True)
    return "".join(lines[-tail:])

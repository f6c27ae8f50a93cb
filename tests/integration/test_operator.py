"""The operator (a real process) against the real local cluster, with the stand-in trainer image
(tests/standin/): lifecycle, retries, queueing, suspend/resume, deletion and operator restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO_ROOT, Cluster, load_image, wait_until

pytestmark = pytest.mark.integration

STANDIN = "localhost/finetune-standin:it"
CRD = REPO_ROOT / "crds" / "finetune.dev_finetunejobs.yaml"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    """The generated CRD, installed (idempotent) and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s"
    )


@pytest.fixture(scope="session")
def standin(cluster: Cluster) -> str:
    """The stand-in trainer image on the node (python3-only Debian base; seconds to build)."""
    subprocess.run([str(REPO_ROOT / "hack/docker-up.sh")], check=True, capture_output=True)
    subprocess.run(
        ["docker", "build", "-q", "--network", "none", "--build-arg",
         "BASE_IMAGE=localhost/debian:bookworm", "-t", STANDIN, str(REPO_ROOT / "tests/standin")],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    load_image(cluster, STANDIN)
    return STANDIN


class Operator:
    """``finetune-operator`` as a subprocess watching one namespace."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path) -> None:
        self.cluster, self.namespace, self.log = cluster, namespace, log
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.metrics_port = sock.getsockname()[1]

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.cluster.kubeconfig,
            "FTO_NAMESPACES": self.namespace,
            "FTO_TRAINER_IMAGE": STANDIN,
            "FTO_HEALTH_PORT": "0",
            "FTO_METRICS_PORT": str(self.metrics_port),
            # events and per-job wake-ups do the work: the safety net must not hide a lost one
            "FTO_RESYNC_SECONDS": "600",
            "FTO_TERMINATION_GRACE_SECONDS": "30",
            "FTO_PROGRESS_INTERVAL_SECONDS": "0.5",
            "FTO_PREPARE_MEMORY": "256Mi",
            "FTO_PREPARE_CPU": "100m",
        }
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator"], env=env, stdout=out, stderr=out
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def operator(
    cluster: Cluster, crd: None, standin: str, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    op = Operator(cluster, namespace, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
    print(f"--- operator log (tail) ---\n{op.tail()}")


# ------------------------------------------------------------------------------------- helpers


def pvc(cluster: Cluster, namespace: str, name: str = "out") -> None:
    body = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    # bound before a job uses it: an unbound claim is itself a (transient) scheduling reason
    cluster.kubectl(
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        f"pvc/{name}",
        "-n",
        namespace,
        "--timeout=60s",
    )


def data_config_map(cluster: Cluster, namespace: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "data", "namespace": namespace},
        "data": {"train.jsonl": '{"instruction": "hi", "output": "hello"}\n'},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def job(
    cluster: Cluster,
    namespace: str,
    name: str = "bot",
    *,
    steps: int = 8,
    pace: float = 0.3,
    env: dict[str, str] | None = None,
    **spec: Any,
) -> None:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny/model"},
            "dataset": {"configMap": {"name": "data"}},
            "training": {"maxSteps": steps, "batchSize": 4},
            "resources": {"gpus": 0},
            "checkpoint": {"everySteps": 3},
            "output": {"pvc": "out"},
            "retry": {"limit": 2, "backoffSeconds": 1},
            "podTemplate": {
                "env": [
                    {"name": k, "value": v}
                    for k, v in {"STANDIN_STEP_SECONDS": str(pace), **(env or {})}.items()
                ]
            },
            **spec,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def get(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json")
    )
    return out


def status(cluster: Cluster, namespace: str, name: str = "bot") -> dict[str, Any]:
    st: dict[str, Any] = get(cluster, namespace, "ftj", name).get("status") or {}
    return st


def pods(cluster: Cluster, namespace: str) -> list[str]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name")
    return sorted(line.removeprefix("pod/") for line in out.split())


def wait_phase(
    cluster: Cluster,
    namespace: str,
    phase: str,
    *,
    name: str = "bot",
    timeout: float = 90,
    extra: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(cluster, namespace, name)
        return st if st.get("phase") == phase and extra(st) else None

    return wait_until(
        check,
        timeout=timeout,
        interval=0.5,
        message=lambda: (
            f"{name} to be {phase}; status: {json.dumps(status(cluster, namespace, name))[:1500]}"
        ),
    )


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions", [])}


def logs(cluster: Cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", pod, "-n", namespace)


# --------------------------------------------------------------------------------------- tests


def test_create_runs_to_success_with_progress_mirrored(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=10, pace=0.4)
    running = wait_phase(
        cluster, namespace, "Running", extra=lambda s: (s.get("progress") or {}).get("step", 0) > 0
    )
    assert conditions(running)["Ready"] == "True"
    assert running["plan"]["microBatchSize"] == 4 and running["data"]["records"] == 200
    done = wait_phase(cluster, namespace, "Succeeded")
    assert done["progress"]["step"] == 10 and done["progress"]["percent"] == 100
    assert conditions(done)["Succeeded"] == "True" and conditions(done)["Stalled"] == "False"
    assert done["observedGeneration"] == 1 and done["completionTime"]
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics").read()
    assert f'namespace="{namespace}"'.encode() in scraped
    # no finalizer: a job can be deleted while the operator is down
    assert "finalizers" not in get(cluster, namespace, "ftj", "bot")["metadata"]
    assert [a["reason"] for a in done["attempts"]] == ["Completed"]
    # the children, with the least-privilege Role for the trainer
    role = get(cluster, namespace, "role", "bot-trainer")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["bot-progress"],
         "verbs": ["get", "patch", "update"]}
    ]  # fmt: skip
    for kind, name in [("sa", "bot-trainer"), ("rolebinding", "bot-trainer"),
                       ("cm", "bot-config"), ("cm", "bot-progress")]:  # fmt: skip
        owners = get(cluster, namespace, kind, name)["metadata"]["ownerReferences"]
        assert owners[0]["kind"] == "FineTuneJob"
    assert pods(cluster, namespace) == ["bot-1", "bot-prepare"]
    printed = cluster.kubectl("get", "ftj", "-n", namespace)
    assert printed.split()[:6] == ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA"]
    reasons = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=FineTuneJob",
        "-o", "jsonpath={.items[*].reason}",
    )  # fmt: skip
    assert {"Preparing", "Starting", "Succeeded"} <= set(reasons.split())


def test_failure_retries_from_checkpoint_then_fails_after_the_limit(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=10, pace=0.2,
        env={"STANDIN_FAIL_AT_STEP": "5", "STANDIN_FAIL_EXIT": "1"},
        retry={"limit": 1, "backoffSeconds": 1})  # fmt: skip
    failed = wait_phase(cluster, namespace, "Failed", timeout=120)
    assert failed["reason"] == "Error"
    assert "retry limit 1" in failed["message"]
    assert [a["reason"] for a in failed["attempts"]] == ["Error", "Error"]
    assert [a["exitCode"] for a in failed["attempts"]] == [1, 1]
    assert conditions(failed)["Stalled"] == "True" and conditions(failed)["Ready"] == "False"
    assert "resuming from step 3" in logs(cluster, namespace, "bot-2")


def test_retriable_failure_then_success(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=8, pace=0.2,
        env={"STANDIN_FAIL_AT_STEP": "4", "STANDIN_FAIL_EXIT": "11", "STANDIN_FAIL_ATTEMPTS": "1"},
        retry={"limit": 2, "backoffSeconds": 1})  # fmt: skip
    done = wait_phase(cluster, namespace, "Succeeded", timeout=120)
    assert [a["reason"] for a in done["attempts"]] == ["CudaOOM", "Completed"]
    # the micro-batch was halved, the effective batch kept
    assert done["plan"]["microBatchSize"] == 2 and done["plan"]["gradientAccumulation"] == 2
    config = json.loads(get(cluster, namespace, "cm", "bot-config")["data"]["config.json"])
    assert config["training"]["micro_batch_size"] == 2
    assert config["job"]["attempt"] == 2
    assert "resuming from step 3" in logs(cluster, namespace, "bot-2")


def test_unschedulable_is_queued_with_the_reason(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, resources={"gpus": 4, "gpuMemoryMiB": 12288})
    queued = wait_phase(cluster, namespace, "Queued")
    assert queued["reason"] == "Unschedulable"
    assert queued["message"].startswith("waiting for 4 nvidia.com/gpu: ")
    assert "Insufficient nvidia.com/gpu" in queued["message"]
    assert conditions(queued)["Ready"] == "True"
    pod = get(cluster, namespace, "pod", "bot-1")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_suspend_then_resume_from_the_checkpoint(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=30, pace=0.3)
    wait_phase(cluster, namespace, "Running",
               extra=lambda s: (s.get("progress") or {}).get("step", 0) >= 4)  # fmt: skip
    cluster.kubectl("patch", "ftj", "bot", "-n", namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":true}}')  # fmt: skip
    suspended = wait_phase(cluster, namespace, "Suspended", timeout=60)
    assert suspended["attempts"][-1]["reason"] == "Suspended"
    assert suspended["attempts"][-1]["exitCode"] == 10
    ckpt = suspended["checkpoint"]["step"]
    assert ckpt >= 4
    assert conditions(suspended)["Suspended"] == "True"
    wait_until(lambda: "bot-1" not in pods(cluster, namespace) or
               get(cluster, namespace, "pod", "bot-1")["status"]["phase"] == "Failed",
               timeout=30, message="the suspended pod to end")  # fmt: skip
    cluster.kubectl("patch", "ftj", "bot", "-n", namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":false}}')  # fmt: skip
    done = wait_phase(cluster, namespace, "Succeeded", timeout=90)
    assert [a["reason"] for a in done["attempts"]] == ["Suspended", "Completed"]
    assert f"resuming from step {ckpt}" in logs(cluster, namespace, "bot-2")


def test_resume_while_the_pod_stops_is_no_failure(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """Two suspend/resume cycles, each resumed while the pod is still checkpointing, with
    retry.limit 0: no retry is spent, each next attempt waits for the old pod and resumes."""
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=20, pace=0.3, env={"STANDIN_STOP_SECONDS": "4"},
        retry={"limit": 0, "backoffSeconds": 1})  # fmt: skip
    for attempt in (1, 2):
        wait_phase(cluster, namespace, "Running", timeout=60,
                   extra=lambda s, n=attempt: s.get("attempt") == n
                   and (s.get("progress") or {}).get("step", 0) > 3 * n)  # fmt: skip
        for suspend in ("true", "false"):
            cluster.kubectl("patch", "ftj", "bot", "-n", namespace, "--type", "merge",
                            "-p", f'{{"spec":{{"suspend":{suspend}}}}}')  # fmt: skip
            if suspend == "true":
                wait_phase(cluster, namespace, "Suspending", timeout=30)
        resumed = wait_phase(
            cluster, namespace, "Suspending", extra=lambda s: "resume" in s.get("message", "")
        )
        assert resumed["attempt"] == attempt
        assert f"bot-{attempt + 1}" not in pods(cluster, namespace)  # not while the old one stops
    done = wait_phase(cluster, namespace, "Succeeded", timeout=120)
    assert [a["reason"] for a in done["attempts"]] == ["Suspended", "Suspended", "Completed"]
    assert done["progress"]["step"] == 20
    assert "resuming from step 0" not in logs(cluster, namespace, "bot-3")


def test_a_child_the_apiserver_refuses_fails_the_job_with_its_message(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    # passes the operator's own checks (its volume, an allowed type), refused by the apiserver's
    # validation (422): one mountPath twice
    job(cluster, namespace, podTemplate={
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/x"},
                         {"name": "scratch", "mountPath": "/x"}],
    })  # fmt: skip
    failed = wait_phase(cluster, namespace, "Failed", timeout=30)
    assert failed["reason"] == "BadSpec", failed
    assert failed["message"].startswith("The API server refused to create the Pod: ")
    assert "/x" in failed["message"] and "must be unique" in failed["message"]
    reasons = cluster.kubectl("get", "events", "-n", namespace, "-o",
                              "jsonpath={.items[*].reason}")  # fmt: skip
    assert "BadSpec" in reasons.split()


def test_deleted_children_are_created_again(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=24, pace=0.3)
    wait_phase(cluster, namespace, "Running",
               extra=lambda s: (s.get("progress") or {}).get("step", 0) >= 2)  # fmt: skip
    for kind, name in [("rolebinding", "bot-trainer"), ("cm", "bot-progress")]:
        cluster.kubectl("delete", kind, name, "-n", namespace)
    wait_until(lambda: all(get(cluster, namespace, k, n) for k, n in
                           [("rolebinding", "bot-trainer"), ("cm", "bot-progress")]),
               timeout=30, message="the children to come back")  # fmt: skip
    done = wait_phase(cluster, namespace, "Succeeded", timeout=90)
    assert [a["reason"] for a in done["attempts"]] == ["Completed"]
    assert done["progress"]["step"] == 24
    events = cluster.kubectl("get", "events", "-n", namespace,
                             "--field-selector", "reason=ChildRecreated", "-o", "name")  # fmt: skip
    assert len(events.split()) >= 2


def test_active_deadline_fails_the_job_and_stops_its_pod(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=200, pace=0.3, activeDeadlineSeconds=8)
    failed = wait_phase(cluster, namespace, "Failed", timeout=60)
    assert failed["reason"] == "DeadlineExceeded"
    assert "spec.activeDeadlineSeconds" in failed["message"]
    wait_until(lambda: "bot-1" not in pods(cluster, namespace), timeout=60,
               message="the training pod to be stopped")  # fmt: skip


def test_two_replicas_one_leads_and_the_other_takes_over(
    cluster: Cluster, namespace: str, operator: Operator, tmp_path: Path
) -> None:
    """A second replica waits on the Lease; the leader killed mid-run (no release), the other
    takes over within the lease duration: no duplicate pod, no lost step."""
    second = Operator(cluster, namespace, tmp_path / "operator-2.log")
    second.start()
    try:
        pvc(cluster, namespace)
        data_config_map(cluster, namespace)
        job(cluster, namespace, steps=120, pace=0.3)  # outlasts the lease duration
        wait_phase(cluster, namespace, "Running",
                   extra=lambda s: (s.get("progress") or {}).get("step", 0) >= 3)  # fmt: skip
        lease = get(cluster, namespace, "lease", "finetune-operator")["spec"]
        pid = int(lease["holderIdentity"].rsplit("-", 1)[1])
        leader_, follower = (
            (operator, second) if operator.proc and operator.proc.pid == pid else (second, operator)
        )
        assert leader_.proc is not None and leader_.proc.pid == pid
        leader_.stop(signal.SIGKILL)
        step_at_kill = status(cluster, namespace)["progress"]["step"]
        took_over = wait_until(
            lambda: (h := get(cluster, namespace, "lease", "finetune-operator")["spec"].get(
                "holderIdentity")) and not h.endswith(f"-{pid}") and h,
            timeout=30, message="the other replica to take the lease",
        )  # fmt: skip
        assert follower.proc is not None and took_over.endswith(f"-{follower.proc.pid}")
        # progress keeps reaching the status through the new leader
        wait_phase(cluster, namespace, "Running", timeout=30,
                   extra=lambda s: s["progress"]["step"] > step_at_kill + 3)  # fmt: skip
        done = wait_phase(cluster, namespace, "Succeeded", timeout=90)
        assert pods(cluster, namespace) == ["bot-1", "bot-prepare"]
        assert [a["reason"] for a in done["attempts"]] == ["Completed"]
        assert done["progress"]["step"] == 120
    finally:
        second.stop()
        print(f"--- second operator log (tail) ---\n{second.tail()}")


def test_delete_removes_children_and_keeps_the_user_pvc(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=100, pace=0.5)
    wait_phase(cluster, namespace, "Running")
    cluster.kubectl("delete", "ftj", "bot", "-n", namespace, "--wait=true")

    def children_gone() -> bool:
        left = []
        for kind in ("pods", "cm", "sa", "role", "rolebinding"):
            out = cluster.kubectl("get", kind, "-n", namespace, "-l", "finetune.dev/job=bot",
                                  "-o", "name")  # fmt: skip
            left += out.split()
        return not left

    wait_until(children_gone, timeout=90, message="the job's children to be collected")
    assert get(cluster, namespace, "pvc", "out")["metadata"]["name"] == "out"


def test_operator_restart_mid_job_makes_no_duplicate_pod(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=20, pace=0.3)
    before = wait_phase(cluster, namespace, "Running",
                        extra=lambda s: (s.get("progress") or {}).get("step", 0) >= 2)  # fmt: skip
    operator.stop(signal.SIGKILL)
    operator.start()
    done = wait_phase(cluster, namespace, "Succeeded", timeout=90)
    assert pods(cluster, namespace) == ["bot-1", "bot-prepare"]
    assert done["attempt"] == 1 and [a["reason"] for a in done["attempts"]] == ["Completed"]
    assert done["startTime"] == before["startTime"]
    assert done["progress"]["step"] == 20


def test_missing_pvc_fails_with_a_named_reason(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    data_config_map(cluster, namespace)
    job(cluster, namespace, output={"pvc": "nope"})
    failed = wait_phase(cluster, namespace, "Failed", timeout=30)
    assert failed["reason"] == "PVCNotFound"
    assert '"nope"' in failed["message"]
    assert pods(cluster, namespace) == []
    reasons = cluster.kubectl("get", "events", "-n", namespace, "-o",
                              "jsonpath={.items[*].reason}")  # fmt: skip
    assert "PVCNotFound" in reasons.split()


def test_bad_data_fails_in_prepare_without_a_training_pod(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, env={"STANDIN_BAD_ROW": "1234"})
    failed = wait_phase(cluster, namespace, "Failed", timeout=60)
    assert failed["reason"] == "BadData"
    assert "row 1234" in failed["message"]
    assert pods(cluster, namespace) == ["bot-prepare"]


def test_output_claim_created_from_a_size_outlives_the_job(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=4, pace=0.2, output={"size": "1Gi"})
    wait_phase(cluster, namespace, "Succeeded", timeout=90)
    claim = get(cluster, namespace, "pvc", "bot-output")
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"]["finetune.dev/job"] == "bot"
    cluster.kubectl("delete", "ftj", "bot", "-n", namespace, "--wait=true")
    wait_until(lambda: not cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").strip(),
               timeout=60, message="the pods to be collected")  # fmt: skip
    assert get(cluster, namespace, "pvc", "bot-output")["status"]["phase"] == "Bound"


def test_restart_annotation_mid_run_starts_over_from_step_0(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    job(cluster, namespace, steps=20, pace=0.3)
    wait_phase(cluster, namespace, "Running",
               extra=lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 3)  # fmt: skip
    value = "2026-11-26T12:00:00Z"
    # what `kubectl finetune restart` and the Argo CD action do: no spec change, no new generation
    cluster.kubectl("annotate", "ftj", "bot", "-n", namespace,
                    f"finetune.dev/restart-requested-at={value}")  # fmt: skip
    done = wait_phase(cluster, namespace, "Succeeded", timeout=150,
                      extra=lambda s: s.get("lastRestartRequestedAt") == value)  # fmt: skip
    assert done["run"] == 1
    assert done["attempt"] == 1 and [a["reason"] for a in done["attempts"]] == ["Completed"]
    assert done["progress"]["step"] == 20
    # the new pod trained in runs/1, where no checkpoint of the first run could be found
    assert "attempt 1: resuming from step 0 of 20" in logs(cluster, namespace, "bot-1")
    config = get(cluster, namespace, "cm", "bot-config")["data"]["config.json"]
    assert json.loads(config)["paths"]["work"] == "/workspace/runs/1"
    events = cluster.kubectl("get", "events", "-n", namespace,
                             "--field-selector", "reason=Restarting", "-o", "name")  # fmt: skip
    assert events.split(), "no Restarting event"


def test_retry_annotation_resumes_a_failed_job_from_its_checkpoint(
    cluster: Cluster, namespace: str, operator: Operator
) -> None:
    pvc(cluster, namespace)
    data_config_map(cluster, namespace)
    # attempt 1 fills the volume at step 5 (DiskFull, exit 6: never retried by itself)
    job(cluster, namespace, steps=10, pace=0.2,
        env={"STANDIN_FAIL_AT_STEP": "5", "STANDIN_FAIL_EXIT": "6", "STANDIN_FAIL_ATTEMPTS": "1"},
        retry={"limit": 0, "backoffSeconds": 1})  # fmt: skip
    failed = wait_phase(cluster, namespace, "Failed", timeout=240)
    assert failed["reason"] == "DiskFull" and failed["checkpoint"]["step"] == 3
    value = "2026-11-26T12:00:00Z"
    # what `kubectl finetune retry` and the Argo CD retry action do (after the claim grew)
    cluster.kubectl("annotate", "ftj", "bot", "-n", namespace,
                    f"finetune.dev/retry-requested-at={value}")  # fmt: skip
    done = wait_phase(cluster, namespace, "Succeeded", timeout=240,
                      extra=lambda s: s.get("lastRetryRequestedAt") == value)  # fmt: skip
    # same run, the next attempt, from the checkpoint; retry.limit 0 did not stop it
    assert (done["run"], done["attempt"], done["retryBudgetFrom"]) == (0, 2, 1)
    assert [a["reason"] for a in done["attempts"]] == ["DiskFull", "Completed"]
    assert done["progress"]["step"] == 10
    assert "resuming from step 3" in logs(cluster, namespace, "bot-2")
    events = cluster.kubectl("get", "events", "-n", namespace,
                             "--field-selector", "reason=RetryRequested", "-o", "name")  # fmt: skip
    assert events.split(), "no RetryRequested event"

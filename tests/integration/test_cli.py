"""``kubectl finetune`` against the local cluster, on FineTuneJobs created here with their status
written through the status subresource (no operator needed), plus one ``watch`` in tmux."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from finetune_operator import models as m
from tests.harness import DEBIAN_IMAGE, REPO_ROOT, Cluster, Kube, wait_for_pod_phase, wait_until

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CLI = str(BIN / "kubectl-finetune")
SPEC: dict[str, Any] = {
    "model": {"name": "tiny/llama"},
    "dataset": {"url": "https://example.com/train.jsonl"},
    "method": "lora",
    "training": {"maxSteps": 400},
    "resources": {"gpus": 2},
    "output": {"pvc": "out"},
}
RUNNING: dict[str, Any] = {
    "phase": "Running",
    "reason": "Running",
    "message": "step 120/400, loss 1.42",
    "attempt": 1,
    "plan": {"strategy": "ddp", "microBatchSize": 4, "gradientAccumulation": 2},
    "progress": {
        "attempt": 1,
        "step": 120,
        "totalSteps": 400,
        "percent": 30.0,
        "loss": 1.42,
        "tokensPerSecond": 5120.0,
        "etaSeconds": 1680,
    },
}


@pytest.fixture(scope="session", autouse=True)
def crd(cluster: Cluster) -> None:
    if not cluster.kubectl("get", "crd", f"{m.PLURAL}.{m.GROUP}", "--ignore-not-found").strip():
        cluster.kubectl("apply", "-f", str(REPO_ROOT / "crds" / f"{m.GROUP}_{m.PLURAL}.yaml"))
    wait_until(
        lambda: (
            "Established" in cluster.kubectl("get", "crd", f"{m.PLURAL}.{m.GROUP}", "-o", "json")
        ),
        timeout=60,
        message="the FineTuneJob CRD",
    )


def cli(namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "-n", namespace, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def job(kube: Kube, namespace: str) -> Callable[..., str]:
    """Factory: create a FineTuneJob ``name`` with ``status`` written to its status."""

    def make(name: str = "bot", status: dict[str, Any] | None = None, **spec: Any) -> str:
        body = {
            "apiVersion": m.API_VERSION,
            "kind": m.KIND,
            "metadata": {"name": name},
            "spec": {**SPEC, **spec},
        }
        kube.custom.create_namespaced_custom_object(m.GROUP, m.VERSION, namespace, m.PLURAL, body)
        if status is not None:
            set_status(kube, namespace, name, status)
        return name

    return make


def set_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> None:
    kube.custom.patch_namespaced_custom_object_status(
        m.GROUP,
        m.VERSION,
        namespace,
        m.PLURAL,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


def read(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj: Any = kube.custom.get_namespaced_custom_object(
        m.GROUP, m.VERSION, namespace, m.PLURAL, name
    )
    return dict(obj)


def test_list_get_and_kubectl_plugin_discovery(
    cluster: Cluster, namespace: str, job: Callable[..., str]
) -> None:
    job("bot", RUNNING)
    job("other")
    out = cli(namespace, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA", "GPUS", "AGE"]
    assert lines[1].split()[:7] == ["bot", "Running", "30%", "120/400", "1.42", "28m", "2"]
    assert lines[2].split()[:2] == ["other", "Pending"]
    every = cli(namespace, "list", "-A")
    assert f"{namespace}   bot" in every.stdout
    got = cli(namespace, "get", "bot", "-o", "json")
    assert json.loads(got.stdout)["status"]["progress"]["step"] == 120
    assert "managedFields" not in got.stdout
    assert yaml.safe_load(cli(namespace, "get", "bot", "-o", "yaml").stdout)["spec"][
        "resources"
    ] == {"gpus": 2, "nodes": 1}  # the CRD's default for nodes is filled in
    missing = cli(namespace, "get", "nope")
    assert missing.returncode == 1 and "not found" in missing.stderr
    # kubectl finds the plugin on PATH and hands completion to kubectl_complete-finetune
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    kubectl = shutil.which("kubectl") or "kubectl"
    plugin = subprocess.run(
        [kubectl, "finetune", "-n", namespace, "list"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert plugin.returncode == 0 and "bot" in plugin.stdout, plugin.stderr
    completion = subprocess.run(
        [kubectl, "__complete", "finetune", "watch", "-n", namespace, ""],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert completion.stdout.splitlines()[:3] == ["bot", "other", ":4"], completion.stderr


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ({"phase": "Succeeded", "reason": "Completed"}, 0),
        ({"phase": "Failed", "reason": "BadData", "message": "row 3: no instruction"}, 1),
        ({"phase": "Suspended", "reason": "Suspended"}, 3),
        (RUNNING, 4),
    ],
)
def test_status_exit_codes(
    namespace: str, job: Callable[..., str], status: dict[str, Any], code: int
) -> None:
    job("bot", status)
    out = cli(namespace, "status", "bot")
    assert out.returncode == code, out.stdout + out.stderr
    assert out.stdout.startswith(f"bot: {status['phase']}")
    if code == 1:
        assert "BadData: row 3: no instruction" in out.stdout


def test_status_watch_times_out_then_follows_to_success(
    kube: Kube, namespace: str, job: Callable[..., str]
) -> None:
    job("bot", RUNNING)
    out = cli(namespace, "status", "bot", "--watch", "--timeout", "2", "--interval", "0.5")
    assert out.returncode == 2 and "timed out" in out.stderr
    assert cli(namespace, "status", "nope").returncode == 5
    proc = subprocess.Popen(
        [CLI, "-n", namespace, "status", "bot", "-w", "--interval", "0.5", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # each line is flushed: the watch has shown Running
    set_status(kube, namespace, "bot", {"phase": "Succeeded", "reason": "Completed"})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert first.startswith("bot: Running")
    assert stdout.splitlines()[-1].startswith("bot: Succeeded")


def test_pause_resume_restart(kube: Kube, namespace: str, job: Callable[..., str]) -> None:
    job("bot", RUNNING)
    assert (
        cli(namespace, "suspend", "bot").stdout.strip() == "finetunejob.finetune.dev/bot suspended"
    )
    assert read(kube, namespace, "bot")["spec"]["suspend"] is True
    assert "already suspended" in cli(namespace, "pause", "bot").stdout  # the alias
    assert cli(namespace, "resume", "bot").returncode == 0
    assert read(kube, namespace, "bot")["spec"]["suspend"] is False
    before = time.time()
    out = cli(namespace, "restart", "bot")
    assert out.returncode == 0, out.stderr
    value = read(kube, namespace, "bot")["metadata"]["annotations"][m.RESTART_ANNOTATION]
    stamp = time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 2 <= stamp <= time.time() + 2


@pytest.fixture
def pods(kube: Kube, namespace: str) -> Iterator[Callable[[str, str, int], None]]:
    def make(name: str, job_name: str, attempt: int) -> None:
        script = f"for i in $(seq 1 600); do echo {name} line $i; done; echo ready; sleep 600"
        body: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    m.LABEL_JOB: job_name,
                    m.LABEL_ROLE: "train",
                    m.LABEL_ATTEMPT: str(attempt),
                },
            },
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "trainer",
                        "image": DEBIAN_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", script],
                        "env": [{"name": "HF_TOKEN", "value": "hf_literal_do_not_leak"}],
                    }
                ],
            },
        }
        kube.core.create_namespaced_pod(namespace, body)

    yield make


def test_logs_events_and_report(
    kube: Kube,
    namespace: str,
    job: Callable[..., str],
    pods: Callable[[str, str, int], None],
    tmp_path: Path,
) -> None:
    job("bot", {**RUNNING, "attempt": 2})
    assert "no pods" in cli(namespace, "logs", "bot").stderr
    pods("bot-1", "bot", 1)
    pods("bot-2", "bot", 2)
    for name in ("bot-1", "bot-2"):
        wait_for_pod_phase(kube.core, namespace, name, ("Running",), timeout=120)
    wait_until(lambda: "ready" in cli(namespace, "logs", "bot").stdout, timeout=60, message="logs")
    out = cli(namespace, "logs", "bot", "--tail", "2")
    assert out.stdout.splitlines() == ["bot-2 line 600", "ready"]
    assert "==> pod bot-2" in out.stderr
    follow = subprocess.Popen(
        [CLI, "-n", namespace, "logs", "bot", "-f", "--tail", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().strip() == "ready"
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.wait(timeout=30)

    uid = read(kube, namespace, "bot")["metadata"]["uid"]
    event: Any = {
        "metadata": {"generateName": "bot."},
        "involvedObject": {
            "apiVersion": m.API_VERSION,
            "kind": m.KIND,
            "name": "bot",
            "namespace": namespace,
            "uid": uid,
        },
        "type": "Warning",
        "reason": "CudaOOM",
        "message": "pod bot-1 failed (exit code 11)",
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "source": {"component": "finetune-operator"},
    }
    kube.core.create_namespaced_event(namespace, event)
    events = cli(namespace, "events", "bot")
    assert events.returncode == 0, events.stderr
    lines = events.stdout.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert any("CudaOOM" in line and "finetunejob/bot" in line for line in lines)
    assert any("pod/bot-2" in line for line in lines)  # the kubelet's Scheduled/Started…

    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name="hub"), string_data={"token": "hf_secret_value"}
    )
    kube.core.create_namespaced_secret(namespace, secret)
    target = tmp_path / "bot-report.tar.gz"
    out = cli(namespace, "report", "bot", "-o", str(target))
    assert out.returncode == 0, out.stderr
    with tarfile.open(target) as tar:
        names = set(tar.getnames())
        texts = {n: tar.extractfile(n).read().decode() for n in names if tar.getmember(n).isfile()}  # type: ignore[union-attr]
    top = "bot-report"
    assert {
        f"{top}/job.yaml",
        f"{top}/pods.yaml",
        f"{top}/events.yaml",
        f"{top}/events.txt",
        f"{top}/summary.txt",
        f"{top}/logs/bot-1/trainer.log",
        f"{top}/logs/bot-2/trainer.log",
    } <= names
    log = texts[f"{top}/logs/bot-2/trainer.log"].splitlines()
    assert len(log) == 500 and log[-1] == "ready"
    assert yaml.safe_load(texts[f"{top}/job.yaml"])["metadata"]["name"] == "bot"
    assert [p["metadata"]["name"] for p in yaml.safe_load(texts[f"{top}/pods.yaml"])["items"]] == [
        "bot-1",
        "bot-2",
    ]
    everything = "\n".join(texts.values())
    assert "hf_secret_value" not in everything and "kind: Secret" not in everything
    assert "hf_literal_do_not_leak" not in everything and "<redacted>" in everything
    assert "CudaOOM" in texts[f"{top}/events.txt"]


def test_list_watch_prints_changes(kube: Kube, namespace: str, job: Callable[..., str]) -> None:
    job("bot", RUNNING)
    proc = subprocess.Popen(
        [CLI, "-n", namespace, "list", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("NAME")
        assert proc.stdout.readline().split()[1] == "Running"
        set_status(kube, namespace, "bot", {"phase": "Succeeded", "reason": "Completed"})
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "Succeeded" in line:
                break
        assert "Succeeded" in seen[-1], seen
        assert seen[-1].split()[2] == "100%"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_watch_plain_lines_until_terminal(
    kube: Kube, namespace: str, job: Callable[..., str]
) -> None:
    job("bot", RUNNING)
    proc = subprocess.Popen(
        [CLI, "-n", namespace, "watch", "bot", "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "bot: Running — step 120/400 (30%), loss 1.42" in first
    set_status(kube, namespace, "bot", {"phase": "Failed", "reason": "BadData", "message": "row 3"})
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "bot: Failed" in rest.splitlines()[-1]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_watch_live_view_in_a_real_terminal(
    kube: Kube, namespace: str, job: Callable[..., str], tmp_path: Path
) -> None:
    job("bot", RUNNING)
    session = f"fto-watch-{uuid.uuid4().hex[:6]}"
    socket = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", socket]
    done = tmp_path / "exit-code"
    command = f"{CLI} -n {namespace} watch bot --interval 0.5; echo $? > {done}; sleep 600"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "110", "-y", "30", command],
        check=True,
        timeout=30,
        env={**os.environ, "TERM": "xterm-256color"},
    )

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    try:
        shown = wait_until(
            lambda: next((s for s in [screen()] if "Last event" in s), ""),
            timeout=60,
            message="the live view",
        )
        (tmp_path.parent / "watch-running.txt").write_text(shown)
        assert f"FineTuneJob {namespace}/bot" in shown
        assert "Running" in shown
        assert "█████████░░░" in shown and "120/400 steps (30%)" in shown
        assert "28m" in shown and "5120" in shown
        progress = {**RUNNING["progress"], "step": 300, "percent": 75.0, "loss": 0.91}
        set_status(kube, namespace, "bot", {"progress": progress})
        wait_until(lambda: "300/400 steps (75%)" in screen(), timeout=60, message="the update")
        set_status(kube, namespace, "bot", {"phase": "Succeeded", "reason": "Completed"})
        wait_until(done.exists, timeout=60, message="watch to end")
        final = screen()
        (tmp_path.parent / "watch-succeeded.txt").write_text(final)
        assert done.read_text().strip() == "0"
        assert "Succeeded" in final and "█" * 30 in final
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=30)


GONE: dict[str, Any] = {
    "phase": "Suspended",
    "reason": "Suspended",
    "attempt": 1,
    "attempts": [{"attempt": 1, "pod": "bot-1", "reason": "Suspended"}],
}


def viewer_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A ServiceAccount that may read jobs, pods and their logs in ``namespace``, and nothing
    more (no pods/exec, no pod creation), as a kubeconfig with its token."""
    rules = [
        {"apiGroups": [m.GROUP], "resources": [m.PLURAL], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": ["get", "list"]},
    ]
    objs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "viewer"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "viewer"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
         "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": namespace}]},
    ]  # fmt: skip
    listed = {"apiVersion": "v1", "kind": "List", "items": objs}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(listed))
    token = cluster.kubectl("create", "token", "viewer", "-n", namespace).strip()
    admin = yaml.safe_load(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten"))
    cluster_entry = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": [cluster_entry],
        "users": [{"name": "viewer", "user": {"token": token}}],
        "contexts": [{"name": "viewer", "context": {"cluster": cluster_entry["name"],
                                                    "user": "viewer", "namespace": namespace}}],
        "current-context": "viewer",
    }))  # fmt: skip
    return path


def test_a_gone_pods_log_is_named_on_the_volume_when_it_cannot_be_read(
    cluster: Cluster, kube: Kube, namespace: str, job: Callable[..., str], tmp_path: Path
) -> None:
    job("bot", GONE)
    uid = read(kube, namespace, "bot")["metadata"]["uid"]
    where = f"it is on claim out, bot/logs/{uid}/bot-1.log (older part: bot-1.log.1))"
    # an admin, but no pod of the job is left to take the trainer image from (no spec.image)
    out = cli(namespace, "logs", "bot", "--all")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "==> pod bot-1 (attempt 1, Suspended): gone <==",
        "(no log: no running pod of the job mounts the volume; no pod of the job is left to take "
        f"the trainer image from; {where}",
    ]
    # a user who may only read: the SelfSubjectAccessReview says no, nothing is tried
    viewer = viewer_kubeconfig(cluster, namespace, tmp_path / "viewer.kubeconfig")
    out = cli(namespace, "--kubeconfig", str(viewer), "logs", "bot", "--all")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        "(no log: no running pod of the job mounts the volume; you may not create and delete "
        f"pods (for a reader pod); {where}"
    )
    assert not kube.core.list_namespaced_pod(namespace).items  # no reader pod was made

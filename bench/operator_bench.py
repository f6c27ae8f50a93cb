"""CPU-side benchmark of the operator on the local cluster (issues 6 and 14).

  python bench/operator_bench.py [--jobs 1000] [--steady-seconds 120] [--write]

The operator runs as a process under a ServiceAccount of its own; a FlowSchema puts that
account's requests in a flow of their own (priority level ``exempt``: never queued), so the
apiserver's ``apiserver_flowcontrol_dispatched_requests_total`` counts exactly the operator's
requests, reads and writes, watches included.

1. Real node, stand-in trainer (tests/standin): apply → prepare pod created, apply → training pod
   created, progress lag (the trainer's report lands in the progress ConfigMap → the same step is
   visible in status.progress; both observed here by watches, so clocks don't matter; p50/p95),
   and the operator's requests per running job per minute while the trainers report.
2. KWOK: N jobs asking for 2 GPUs each on simulated GPU nodes: apply → first pod p50/p95 (both
   seen by watches here), time until every job has its pod, the operator's CPU seconds per job
   for that; then a steady window with every job's pod running and nothing changing: the
   operator's requests per running job per minute and CPU per job per minute; the operator's
   peak resident memory (VmHWM) over the whole run.
Prints a markdown block; --write puts it into docs/benchmarks.md between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STANDIN = "localhost/finetune-standin:it"
BEGIN, END = "<!-- operator-bench:begin -->", "<!-- operator-bench:end -->"


def kubectl(*args: str, input: str | None = None) -> str:
    return subprocess.run(
        ["kubectl", *args], input=input, check=True, capture_output=True, text=True
    ).stdout


BENCH_NS = "fto-bench-system"
IDENTITY = "fto-bench-operator"


def operator_identity(workdir: Path) -> Path:
    """A ServiceAccount for the operator (cluster-admin: this is a benchmark, not an install),
    a kubeconfig with its token, and the FlowSchema that counts its requests apart."""
    subprocess.run(["kubectl", "create", "namespace", BENCH_NS], check=False, capture_output=True)
    subprocess.run(["kubectl", "create", "serviceaccount", IDENTITY, "-n", BENCH_NS],
                   check=False, capture_output=True)  # fmt: skip
    subprocess.run(["kubectl", "create", "clusterrolebinding", IDENTITY,
                    "--clusterrole=cluster-admin", f"--serviceaccount={BENCH_NS}:{IDENTITY}"],
                   check=False, capture_output=True)  # fmt: skip
    flow = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": IDENTITY},
        "spec": {
            "matchingPrecedence": 50,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                              "serviceAccount": {"name": IDENTITY, "namespace": BENCH_NS}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "namespaces": ["*"], "clusterScope": True}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps(flow))
    token = kubectl("create", "token", IDENTITY, "-n", BENCH_NS, "--duration=3h").strip()
    admin = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": IDENTITY, "user": {"token": token}}],
        "contexts": [{"name": IDENTITY, "context": {"cluster": cluster["name"], "user": IDENTITY}}],
        "current-context": IDENTITY,
    }
    path = workdir / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def operator_requests() -> int:
    """Requests the apiserver dispatched for the operator's ServiceAccount so far."""
    text = kubectl("get", "--raw", "/metrics")
    prefix = "apiserver_flowcontrol_dispatched_requests_total{"
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix) and f'flow_schema="{IDENTITY}"' in line
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return 0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def start_operator(namespace: str, log: Path, kubeconfig: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "FTO_NAMESPACES": namespace,
        "FTO_TRAINER_IMAGE": STANDIN,
        "FTO_HEALTH_PORT": "0",
        "FTO_METRICS_PORT": "0",
        "FTO_PROGRESS_INTERVAL_SECONDS": "1",
        "FTO_PREPARE_MEMORY": "64Mi",
        "FTO_PREPARE_CPU": "10m",
        # the KWOK nodes' taint (docs/security.md: tolerations are an admin allowlist)
        "FTO_ALLOWED_TOLERATION_KEYS": "nvidia.com/gpu,finetune.dev/simulated",
        # and their label `type: kwok` (node labels are an admin allowlist too)
        "FTO_ALLOWED_NODE_LABEL_KEYS": "type",
    }
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_operator"], env=env, stdout=out, stderr=out
    )


def job_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny/model"},
            "dataset": {"configMap": {"name": "data"}},
            "training": {"maxSteps": 60, "batchSize": 4},
            "checkpoint": {"everySteps": 20},
            "output": {"pvc": "out"},
            **spec,
        },
    }


def seed_namespace(namespace: str) -> None:
    """The inline dataset and the output claim every benchmark job shares."""
    kubectl(
        "create",
        "configmap",
        "data",
        "-n",
        namespace,
        '--from-literal=train.jsonl={"instruction": "hi", "output": "hello"}',
    )
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "out", "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ),
    )


def real_node(namespace: str, jobs: int) -> dict[str, Any]:
    from kubernetes import client, config, watch

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    seed_namespace(namespace)
    seen_cm: dict[tuple[str, int], float] = {}
    seen_status: dict[tuple[str, int], float] = {}
    pods: dict[str, float] = {}
    stop = threading.Event()

    def watch_pods() -> None:
        for ev in watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=600):
            pods.setdefault(ev["object"].metadata.name, time.monotonic())
            if stop.is_set():
                return

    def watch_cms() -> None:
        for ev in watch.Watch().stream(
            core.list_namespaced_config_map, namespace, timeout_seconds=600
        ):
            data = ev["object"].data or {}
            if "progress.json" in data:
                step = json.loads(data["progress.json"]).get("step")
                job = ev["object"].metadata.name.removesuffix("-progress")
                seen_cm.setdefault((job, step), time.monotonic())
            if stop.is_set():
                return

    def watch_jobs() -> None:
        for ev in watch.Watch().stream(
            custom.list_namespaced_custom_object,
            "finetune.dev",
            "v1alpha1",
            namespace,
            "finetunejobs",
            timeout_seconds=600,
        ):
            step = ((ev["object"].get("status") or {}).get("progress") or {}).get("step")
            if step is not None:
                seen_status.setdefault((ev["object"]["metadata"]["name"], step), time.monotonic())
            if stop.is_set():
                return

    for fn in (watch_pods, watch_cms, watch_jobs):
        threading.Thread(target=fn, daemon=True).start()
    time.sleep(1.0)  # the watches are established before the first apply (not a synchronisation)
    before = operator_requests()
    t_start = time.monotonic()
    applied: dict[str, float] = {}
    for i in range(jobs):
        name = f"lat-{i}"
        applied[name] = time.monotonic()
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                job_body(
                    name,
                    namespace,
                    resources={"gpus": 0},
                    podTemplate={"env": [{"name": "STANDIN_STEP_SECONDS", "value": "0.5"}]},
                )
            ),
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        phases = [
            (
                custom.get_namespaced_custom_object(
                    "finetune.dev", "v1alpha1", namespace, "finetunejobs", n
                ).get("status")
                or {}
            ).get("phase")
            for n in applied
        ]
        if all(p in ("Succeeded", "Failed") for p in phases):
            break
        time.sleep(1)
    minutes = (time.monotonic() - t_start) / 60
    requests = operator_requests() - before
    stop.set()
    prep = [pods[f"{n}-prepare"] - t for n, t in applied.items() if f"{n}-prepare" in pods]
    train = [pods[f"{n}-1"] - t for n, t in applied.items() if f"{n}-1" in pods]
    lags = [
        seen_status[k] - v for k, v in seen_cm.items() if k in seen_status and seen_status[k] >= v
    ]
    return {
        "jobs": jobs,
        "phases": phases,
        "apply_to_prepare_pod_s": round(statistics.median(prep), 2) if prep else None,
        "apply_to_training_pod_s": round(statistics.median(train), 2) if train else None,
        "progress_lag_p50_s": round(pct(lags, 0.5), 2),
        "progress_lag_p95_s": round(pct(lags, 0.95), 2),
        "progress_samples": len(lags),
        "requests_per_job_minute": round(requests / jobs / minutes, 1) if minutes else None,
        "minutes": round(minutes, 2),
    }


def kwok(namespace: str, n: int, steady: float, log: Path, kubeconfig: Path) -> dict[str, Any]:
    from kubernetes import client, config, watch

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    nodes = max(10, n // 10)
    subprocess.run([str(ROOT / "hack/kwok-nodes.sh"), str(nodes)], check=True, capture_output=True)
    seed_namespace(namespace)
    jobs_seen: dict[str, float] = {}
    pods_seen: dict[str, float] = {}
    running: set[str] = set()

    def watch_jobs() -> None:
        for ev in watch.Watch().stream(custom.list_namespaced_custom_object, "finetune.dev",
                                       "v1alpha1", namespace, "finetunejobs",
                                       timeout_seconds=3600):  # fmt: skip
            jobs_seen.setdefault(ev["object"]["metadata"]["name"], time.monotonic())

    def watch_pods() -> None:
        for ev in watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=3600):
            pod = ev["object"]
            job = (pod.metadata.labels or {}).get("finetune.dev/job")
            if job:
                pods_seen.setdefault(job, time.monotonic())
                if pod.status and pod.status.phase == "Running":
                    running.add(job)

    for fn in (watch_jobs, watch_pods):
        threading.Thread(target=fn, daemon=True).start()
    time.sleep(1.0)  # the watches are established before the first apply (not a synchronisation)
    op = start_operator(namespace, log, kubeconfig)
    try:
        time.sleep(5.0)  # kopf's start-up (imports, first lists) is not the jobs' cost
        cpu0 = cpu_seconds(op.pid)
        t0 = time.monotonic()
        docs = [
            job_body(
                f"k-{i}",
                namespace,
                resources={"gpus": 2},
                podTemplate={
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "finetune.dev/simulated", "operator": "Exists"}],
                },
            )
            for i in range(n)
        ]
        for k in range(0, n, 100):  # kubectl apply of 1,000 documents at once is slow client-side
            kubectl(
                "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs[k : k + 100])
            )
        applied = time.monotonic() - t0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and len(running) < n:
            time.sleep(1)
        every = time.monotonic() - t0
        cpu_create = cpu_seconds(op.pid) - cpu0
        latencies = [pods_seen[j] - t for j, t in jobs_seen.items() if j in pods_seen]
        # steady state: every pod running, nothing changes; what does watching cost?
        time.sleep(5.0)  # let the last status patches of the start settle
        req0, cpu1, w0 = operator_requests(), cpu_seconds(op.pid), time.monotonic()
        time.sleep(steady)
        minutes = (time.monotonic() - w0) / 60
        req = operator_requests() - req0
        cpu_steady = cpu_seconds(op.pid) - cpu1
        return {
            "jobs": n,
            "nodes": nodes,
            "running": len(running),
            "apply_seconds": round(applied, 1),
            "apply_to_pod_p50_s": round(pct(latencies, 0.5), 2),
            "apply_to_pod_p95_s": round(pct(latencies, 0.95), 2),
            "every_pod_running_seconds": round(every, 1),
            "cpu_ms_per_job_start": round(1000 * cpu_create / n, 1),
            "steady_minutes": round(minutes, 2),
            "steady_requests_per_job_minute": round(req / n / minutes, 2),
            "steady_cpu_ms_per_job_minute": round(1000 * cpu_steady / n / minutes, 2),
            "operator_peak_rss_mib": peak_rss_mib(op.pid),
        }
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(timeout=60)
        # the shared cluster keeps the 20 simulated nodes other tiers use, not a hundred
        extra = [f"node/kwok-gpu-{i}" for i in range(20, nodes)]
        if extra:
            kubectl("delete", "--wait=false", *extra)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--latency-jobs", type=int, default=3)
    p.add_argument("--steady-seconds", type=float, default=120)
    p.add_argument("--write", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("KUBECONFIG", "/run/fto-cluster/admin.kubeconfig")
    subprocess.run([str(ROOT / "hack/cluster-up.sh")], check=True, capture_output=True)
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds/finetune.dev_finetunejobs.yaml"),
    )
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--network",
            "none",
            "--build-arg",
            "BASE_IMAGE=localhost/debian:bookworm",
            "-t",
            STANDIN,
            str(ROOT / "tests/standin"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([str(ROOT / "hack/image-load.sh"), STANDIN], check=True, capture_output=True)
    stamp = int(time.time())
    results: dict[str, Any] = {}
    logdir = Path(f"/tmp/fto-bench-{stamp}")
    logdir.mkdir()
    kubeconfig = operator_identity(logdir)
    for label in ("real", "kwok"):
        ns = f"bench-{label}-{stamp}"
        kubectl("create", "namespace", ns)
        log = logdir / f"{label}-operator.log"
        op = start_operator(ns, log, kubeconfig) if label == "real" else None
        t0 = time.monotonic()
        try:
            if label == "real":
                results[label] = real_node(ns, a.latency_jobs)
            else:
                results[label] = kwok(ns, a.jobs, a.steady_seconds, log, kubeconfig)
        finally:
            if op:
                op.send_signal(signal.SIGTERM)
                op.wait(timeout=30)
            kubectl("delete", "namespace", ns, "--wait=false")
        print(f"phase {label}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    r, k = results["real"], results["kwok"]
    rows = [
        (
            f"apply → prepare pod created (median of {r['jobs']})",
            f"{r['apply_to_prepare_pod_s']} s",
        ),
        (
            "apply → training pod created (prepare included, median)",
            f"{r['apply_to_training_pod_s']} s",
        ),
        (
            "progress lag, trainer report in the ConfigMap → visible in status.progress "
            "(target ≤ 1 s at p95)",
            f"p50 {r['progress_lag_p50_s']} s, p95 {r['progress_lag_p95_s']} s "
            f"({r['progress_samples']} reports)",
        ),
        (
            "operator requests (all verbs) per running job per minute, trainers reporting "
            "every second",
            f"{r['requests_per_job_minute']}",
        ),
        (
            f"{k['jobs']} jobs × 2 GPUs on {k['nodes']} KWOK GPU nodes: apply → the job's pod",
            f"p50 {k['apply_to_pod_p50_s']} s, p95 {k['apply_to_pod_p95_s']} s",
        ),
        (
            f"{k['jobs']} jobs: until every job's pod runs",
            f"{k['every_pod_running_seconds']} s ({k['running']} of {k['jobs']})",
        ),
        (
            "operator CPU per job to start it (reconciles until its pod runs)",
            f"{k['cpu_ms_per_job_start']} ms",
        ),
        (
            f"operator requests per running job per minute, {k['jobs']} jobs idle for "
            f"{k['steady_minutes']} min (target ≤ 5)",
            f"{k['steady_requests_per_job_minute']}",
        ),
        (
            "operator CPU per running job per minute, idle",
            f"{k['steady_cpu_ms_per_job_minute']} ms",
        ),
        (
            f"operator peak resident memory during the {k['jobs']}-job run (target ≤ 250 MiB)",
            f"{k['operator_peak_rss_mib']} MiB",
        ),
    ]
    command = (
        f"python bench/operator_bench.py --jobs {a.jobs} --latency-jobs {a.latency_jobs} "
        f"--steady-seconds {a.steady_seconds:g} --write"
    )
    block = "\n".join(
        [
            BEGIN,
            "## Operator on the local cluster (CPU)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d}, {platform.node()}: {os.cpu_count()} CPU cores, "
            "Kubernetes v1.35.4 built by `hack/build-tools.sh`, the operator as a process "
            f"(`python -m finetune_operator`), stand-in trainer image. Command: `{command}`.",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {m} | {v} |" for m, v in rows),
            END,
        ]
    )
    print(block)
    print(json.dumps(results))
    if a.write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text()
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        doc.write_text(text)


if __name__ == "__main__":
    main()

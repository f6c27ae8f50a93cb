"""CPU-side benchmark of the operator on the local cluster (issue: performance, item 6).

  python bench/operator_bench.py [--jobs 200] [--write]

1. Real node, stand-in trainer (tests/standin): apply → prepare pod created, apply → training pod
   created, progress lag (the trainer's report lands in the progress ConfigMap → the same step is
   visible in status.progress; both observed here by watches, so clocks don't matter; p50/p95),
   and writes to the API per job per minute (the apiserver's own request counter for the
   finetunejobs resource, all verbs, over the run).
2. KWOK: N jobs asking for 2 GPUs each on simulated GPU nodes → time until every job's pod exists,
   and the operator's peak resident memory (VmHWM).
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


def start_operator(namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
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


def request_count() -> int:
    """apiserver_request_total for finetunejobs writes, from the apiserver's own /metrics."""
    text = kubectl("get", "--raw", "/metrics")
    total = 0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="finetunejobs"' in line:
            if 'verb="WATCH"' in line or 'verb="GET"' in line or 'verb="LIST"' in line:
                continue
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


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
    before = request_count()
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
    writes = request_count() - before
    stop.set()
    prep = [pods[f"{n}-prepare"] - t for n, t in applied.items() if f"{n}-prepare" in pods]
    train = [pods[f"{n}-1"] - t for n, t in applied.items() if f"{n}-1" in pods]
    lags = [
        seen_status[k] - v for k, v in seen_cm.items() if k in seen_status and seen_status[k] >= v
    ]
    lags.sort()

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {
        "jobs": jobs,
        "phases": phases,
        "apply_to_prepare_pod_s": round(statistics.median(prep), 2) if prep else None,
        "apply_to_training_pod_s": round(statistics.median(train), 2) if train else None,
        "progress_lag_p50_s": round(pct(lags, 0.5), 2),
        "progress_lag_p95_s": round(pct(lags, 0.95), 2),
        "progress_samples": len(lags),
        "writes_per_job_minute": round(writes / jobs / minutes, 1) if minutes else None,
        "minutes": round(minutes, 2),
    }


def kwok(namespace: str, n: int, log: Path) -> dict[str, Any]:
    from kubernetes import client, config

    config.load_kube_config()
    core = client.CoreV1Api()
    subprocess.run(
        [str(ROOT / "hack/kwok-nodes.sh"), str(max(10, n // 10))], check=True, capture_output=True
    )
    seed_namespace(namespace)
    op = start_operator(namespace, log)
    try:
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
        kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
        applied = time.monotonic() - t0
        deadline = time.monotonic() + 900
        count = 0
        while time.monotonic() < deadline:
            names = {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
            count = sum(1 for i in range(n) if any(x.startswith(f"k-{i}-") for x in names))
            if count >= n:
                break
            time.sleep(1)
        every = time.monotonic() - t0
        hwm = next(
            (
                int(line.split()[1])
                for line in Path(f"/proc/{op.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM")
            ),
            0,
        )
        return {
            "jobs": n,
            "pods": count,
            "apply_seconds": round(applied, 1),
            "every_pod_exists_seconds": round(every, 1),
            "operator_peak_rss_mib": hwm // 1024,
        }
    finally:
        op.send_signal(signal.SIGTERM)
        op.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--latency-jobs", type=int, default=3)
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
    for label, fn in (
        ("real", lambda ns: real_node(ns, a.latency_jobs)),
        ("kwok", lambda ns: kwok(ns, a.jobs, logdir / "kwok-operator.log")),
    ):
        ns = f"bench-{label}-{stamp}"
        kubectl("create", "namespace", ns)
        op = start_operator(ns, logdir / f"{label}-operator.log") if label == "real" else None
        try:
            results[label] = fn(ns)
        finally:
            if op:
                op.send_signal(signal.SIGTERM)
                op.wait(timeout=30)
            kubectl("delete", "namespace", ns, "--wait=false")
    r, k = results["real"], results["kwok"]
    nodes = max(10, k["jobs"] // 10)
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
            "progress lag, trainer report in the ConfigMap → visible in status.progress",
            f"p50 {r['progress_lag_p50_s']} s, p95 {r['progress_lag_p95_s']} s "
            f"({r['progress_samples']} reports)",
        ),
        (
            "writes to finetunejobs (create/update/patch) per job per minute",
            f"{r['writes_per_job_minute']}",
        ),
        (
            f"{k['jobs']} jobs × 2 GPUs on {nodes} KWOK GPU nodes: until every job's pod exists",
            f"{k['every_pod_exists_seconds']} s ({k['pods']} of {k['jobs']})",
        ),
        (
            f"operator peak resident memory during the {k['jobs']}-job run",
            f"{k['operator_peak_rss_mib']} MiB",
        ),
    ]
    command = (
        f"python bench/operator_bench.py --jobs {a.jobs} --latency-jobs {a.latency_jobs} --write"
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

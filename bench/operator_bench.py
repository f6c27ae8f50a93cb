"""CPU-side benchmark of the operator on the local cluster (issues 6 and 14).

  python bench/operator_bench.py [--jobs 1000] [--steady-seconds 120] [--report-seconds 30]
                                 [--write]

The operator runs as a process under a ServiceAccount of its own; FlowSchemas put that account's
requests, and the trainers' (every ServiceAccount of the benchmark's namespaces, and the simulated
trainers' account), in flows of their own (priority level ``exempt``: never queued), so the
apiserver's ``apiserver_flowcontrol_dispatched_requests_total`` counts exactly their requests,
reads and writes, watches and the leader Lease included. Everything cluster-wide that the run
creates (the accounts' namespace, the ClusterRoleBinding, the FlowSchemas, the simulated nodes) is
deleted when it ends, however it ends.

1. Real node, stand-in trainer (tests/standin) reporting every second: apply → prepare pod
   created, apply → training pod created, progress lag (the trainer's report lands in the progress
   ConfigMap → the same step is visible in status.progress; both observed here by watches, so
   clocks don't matter; p50/p95), and the operator's and trainers' requests per job per minute
   over the jobs' whole life.
2. KWOK: N jobs asking for 2 GPUs each on simulated GPU nodes of the benchmark's own: apply →
   first pod p50/p95 (both seen by watches here), time until every prepare pod runs; the prepare
   pods never report on KWOK, so the benchmark writes each job's prepare.json, and the operator
   starts every job's training pod; the operator's CPU per job for all that. Then steady state:
   every job trains and its simulated trainer (the real trainer's ``ConfigMapSink``) reports every
   ``--report-seconds``; over a window of ``--steady-seconds``, the API requests per running job
   per minute (operator + trainer), the progress lag at that load, the operator's CPU per job per
   minute; the operator's peak resident memory (VmHWM) over the whole run.
Prints a markdown block; --write puts it into docs/benchmarks.md between markers.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "trainer-image/src"))  # the trainer's own progress sink
STANDIN = "localhost/finetune-standin:dev"  # hack/images.sh standin
BEGIN, END = "<!-- operator-bench:begin -->", "<!-- operator-bench:end -->"


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    return subprocess.run(
        ["kubectl", *args], input=input, check=check, capture_output=True, text=True
    ).stdout


BENCH_NS = "fto-bench-system"
IDENTITY = "fto-bench-operator"  # the operator's ServiceAccount and its FlowSchema
TRAINERS = "fto-bench-trainers"  # the FlowSchema of every trainer (real and simulated)
SIM_TRAINER = "fto-bench-trainer"  # the simulated trainers' ServiceAccount (KWOK part)


def flow_schema(name: str, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    """A FlowSchema that sends ``subjects``' requests to priority level ``exempt`` (never
    queued) under a name of its own, so the apiserver counts them apart."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "matchingPrecedence": 50,
            "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [{
                "subjects": subjects,
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "namespaces": ["*"], "clusterScope": True}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }  # fmt: skip


def account(name: str, namespace: str = BENCH_NS) -> dict[str, Any]:
    return {"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": namespace}}


@contextlib.contextmanager
def identities(workdir: Path, namespaces: list[str]) -> Iterator[tuple[Path, Path, Path]]:
    """The operator's ServiceAccount (cluster-admin: this is a benchmark, not an install) with a
    kubeconfig, the simulated trainers' ServiceAccount with a token and the cluster's CA, and the
    FlowSchemas that count the operator's and the trainers' requests apart (a trainer pod's
    ServiceAccount is any of ``namespaces``'). Everything cluster-wide is deleted on the way out,
    whatever ends the run."""
    try:
        # an earlier run's namespace may still be terminating
        kubectl("wait", "--for=delete", f"namespace/{BENCH_NS}", "--timeout=180s", check=False)
        kubectl("create", "namespace", BENCH_NS, check=False)
        for sa in (IDENTITY, SIM_TRAINER):
            kubectl("create", "serviceaccount", sa, "-n", BENCH_NS, check=False)
        kubectl("create", "clusterrolebinding", IDENTITY, "--clusterrole=cluster-admin",
                f"--serviceaccount={BENCH_NS}:{IDENTITY}", check=False)  # fmt: skip
        trainers = [account(SIM_TRAINER), *(account("*", ns) for ns in namespaces)]
        flows = [flow_schema(IDENTITY, [account(IDENTITY)]), flow_schema(TRAINERS, trainers)]
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                      "items": flows}))  # fmt: skip
        admin = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
        cluster = admin["clusters"][0]
        token = kubectl("create", "token", IDENTITY, "-n", BENCH_NS, "--duration=3h").strip()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": IDENTITY, "user": {"token": token}}],
            "contexts": [
                {"name": IDENTITY, "context": {"cluster": cluster["name"], "user": IDENTITY}}
            ],
            "current-context": IDENTITY,
        }
        path = workdir / "operator.kubeconfig"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        sim_token = workdir / "trainer.token"
        sim_token.write_text(
            kubectl("create", "token", SIM_TRAINER, "-n", BENCH_NS, "--duration=3h").strip()
        )
        ca = workdir / "ca.crt"
        ca.write_bytes(base64.b64decode(cluster["cluster"]["certificate-authority-data"]))
        yield path, sim_token, ca
    finally:
        for what in (f"flowschema/{IDENTITY}", f"flowschema/{TRAINERS}",
                     f"clusterrolebinding/{IDENTITY}", f"namespace/{BENCH_NS}"):  # fmt: skip
            kubectl("delete", "--ignore-not-found", "--wait=false", what, check=False)


def requests_of(flow: str) -> int:
    """Requests the apiserver dispatched so far for the subjects of FlowSchema ``flow``."""
    text = kubectl("get", "--raw", "/metrics")
    prefix = "apiserver_flowcontrol_dispatched_requests_total{"
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix) and f'flow_schema="{flow}"' in line
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


def start_operator(
    namespace: str, log: Path, kubeconfig: Path, interval: float, profile: Path | None = None
) -> subprocess.Popen[bytes]:
    """The operator as a process; ``profile``: under cProfile (its main thread: kopf's event
    loop, the watches and handlers; not the reconcile workers), the stats written there at exit."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "FTO_NAMESPACES": namespace,
        "FTO_TRAINER_IMAGE": STANDIN,
        "FTO_HEALTH_PORT": "0",
        "FTO_METRICS_PORT": "0",
        "FTO_PROGRESS_INTERVAL_SECONDS": f"{interval:g}",
        "FTO_PREPARE_MEMORY": "64Mi",
        "FTO_PREPARE_CPU": "10m",
        # the KWOK nodes' taint (docs/security.md: tolerations are an admin allowlist)
        "FTO_ALLOWED_TOLERATION_KEYS": "nvidia.com/gpu,finetune.dev/simulated",
        # and their label `type: kwok` (node labels are an admin allowlist too)
        "FTO_ALLOWED_NODE_LABEL_KEYS": "type",
    }
    out = log.open("ab")
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return subprocess.Popen(
        [sys.executable, *profiler, "-m", "finetune_operator"], env=env, stdout=out, stderr=out
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


def seed_namespace(namespace: str, volume: str | None = None) -> None:
    """The inline dataset and the output claim every benchmark job shares; with ``volume``, the
    claim is bound to a PersistentVolume of that name without node affinity (KWOK nodes: a
    local-path volume would pin every pod to the node it was provisioned on)."""
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}},
    }
    if volume is not None:
        claim = {**claim, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "volumeName": volume}  # fmt: skip
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{volume}"},  # never mounted: nothing runs on KWOK
                "claimRef": {"namespace": namespace, "name": "out"},
            },
        }
        kubectl("apply", "-f", "-", input=json.dumps(pv))
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
                "spec": claim,
            }
        ),
    )


class Lag:
    """Progress lag: when each (job, step) was first seen in the job's progress ConfigMap and
    when in its status.progress, both through watches of this process (one clock)."""

    def __init__(self, namespace: str, timeout: int = 3600) -> None:
        from kubernetes import client, watch

        self.cm: dict[tuple[str, int], float] = {}
        self.status: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()
        core, custom = client.CoreV1Api(), client.CustomObjectsApi()

        def configmaps() -> None:
            stream = watch.Watch().stream(
                core.list_namespaced_config_map, namespace, timeout_seconds=timeout
            )
            for ev in stream:
                data = ev["object"].data or {}
                if "progress.json" in data:
                    step = json.loads(data["progress.json"]).get("step")
                    job = ev["object"].metadata.name.removesuffix("-progress")
                    self.cm.setdefault((job, step), time.monotonic())
                if self.stop.is_set():
                    return

        def jobs() -> None:
            stream = watch.Watch().stream(
                custom.list_namespaced_custom_object, "finetune.dev", "v1alpha1", namespace,
                "finetunejobs", timeout_seconds=timeout,
            )  # fmt: skip
            for ev in stream:
                step = ((ev["object"].get("status") or {}).get("progress") or {}).get("step")
                if step is not None:
                    key = (ev["object"]["metadata"]["name"], step)
                    self.status.setdefault(key, time.monotonic())
                if self.stop.is_set():
                    return

        for fn in (configmaps, jobs):
            threading.Thread(target=fn, daemon=True).start()

    def lags(self, since: float = 0.0) -> list[float]:
        """Seconds from each report in the ConfigMap (seen after ``since``) to its step in
        status."""
        seen = self.status
        return [seen[k] - t for k, t in self.cm.items() if t >= since and seen.get(k, -1) >= t]


def real_node(namespace: str, jobs: int) -> dict[str, Any]:
    from kubernetes import client, config, watch

    config.load_kube_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    seed_namespace(namespace)
    pods: dict[str, float] = {}
    stop = threading.Event()

    def watch_pods() -> None:
        for ev in watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=600):
            pods.setdefault(ev["object"].metadata.name, time.monotonic())
            if stop.is_set():
                return

    threading.Thread(target=watch_pods, daemon=True).start()
    lag = Lag(namespace)
    time.sleep(1.0)  # the watches are established before the first apply (not a synchronisation)
    before = requests_of(IDENTITY), requests_of(TRAINERS)
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
    op_requests = requests_of(IDENTITY) - before[0]
    trainer_requests = requests_of(TRAINERS) - before[1]
    stop.set()
    lag.stop.set()
    prep = [pods[f"{n}-prepare"] - t for n, t in applied.items() if f"{n}-prepare" in pods]
    train = [pods[f"{n}-1"] - t for n, t in applied.items() if f"{n}-1" in pods]
    lags = lag.lags()
    return {
        "jobs": jobs,
        "phases": phases,
        "apply_to_prepare_pod_s": round(statistics.median(prep), 2) if prep else None,
        "apply_to_training_pod_s": round(statistics.median(train), 2) if train else None,
        "progress_lag_p50_s": round(pct(lags, 0.5), 2),
        "progress_lag_p95_s": round(pct(lags, 0.95), 2),
        "progress_samples": len(lags),
        "operator_requests_per_job_minute": round(op_requests / jobs / minutes, 1),
        "trainer_requests_per_job_minute": round(trainer_requests / jobs / minutes, 1),
        "minutes": round(minutes, 2),
    }


def bench_nodes(count: int, gpus: int) -> None:
    """``count`` simulated GPU nodes of the benchmark's own (KWOK manages nodes with its
    annotation), labelled and tainted like hack/kwok-nodes.sh's, with ``gpus`` GPUs each."""
    capacity = {"cpu": "256", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": str(gpus)}
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"{BENCH_NODE}{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": f"{BENCH_NODE}{i}",
                           "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                           "nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": str(gpus)},
            },
            "spec": {"taints": [{"key": "finetune.dev/simulated", "value": "true",
                                 "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        for i in range(count)
    ]  # fmt: skip
    kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
    )


BENCH_NODE = "fto-bench-gpu-"


def prepared(step_total: int) -> dict[str, Any]:
    """The prepare stage's report (what tests/standin writes), for jobs whose prepare pod runs on
    a KWOK node and so never writes it."""
    return {
        "ok": True,
        "data": {"records": 200, "tokens": 51200, "truncated": 0},
        "plan": {"strategy": "ddp", "micro_batch_size": 4, "gradient_accumulation": 1,
                 "estimated_gpu_memory_mib": 1024, "gpu_memory_mib": 81920,
                 "parameters": 1000000, "fits": True, "message": "simulated plan"},
        "total_steps": step_total,
        "dataset_hash": "simulated",
        "error": None,
    }  # fmt: skip


class Trainers:
    """Simulated trainers: each job's reports go through the real trainer's ``ConfigMapSink``
    (one merge-patch of its progress ConfigMap, as the simulated trainers' ServiceAccount), one
    every ``interval`` seconds per job, spread evenly over the interval."""

    TOTAL = 1_000_000

    def __init__(self, namespace: str, jobs: list[str], token: Path, ca: Path) -> None:
        from finetune_trainer.progress import ConfigMapSink

        server = json.loads(kubectl("config", "view", "--raw", "-o", "json"))["clusters"][0][
            "cluster"
        ]["server"]
        self.sinks = {j: ConfigMapSink(server, namespace, f"{j}-progress", token, ca) for j in jobs}
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="trainer")
        self.stop = threading.Event()
        self.failures = 0

    def prepare_all(self) -> None:
        body = prepared(self.TOTAL)
        list(self.pool.map(lambda j: self.sinks[j].put("prepare.json", body), self.sinks))

    def _report(self, job: str, step: int) -> None:
        try:
            self.sinks[job].put("progress.json", {
                "attempt": 1, "state": "running", "step": step, "total_steps": self.TOTAL,
                "epoch": step / self.TOTAL, "loss": 2.0 / (1 + step), "learning_rate": 2e-4,
                "tokens_per_second": 1000.0, "eta_seconds": self.TOTAL - step,
                "gpu_memory_mib": 9100, "checkpoint": None,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            })  # fmt: skip
        except Exception:
            self.failures += 1

    def run(self, interval: float) -> None:
        """Until ``stop``: report every job once per ``interval``, each at its own offset."""
        jobs = sorted(self.sinks)
        t0, rounds = time.monotonic(), 0
        while not self.stop.is_set():
            for i, job in enumerate(jobs):
                due = t0 + (rounds + i / len(jobs)) * interval
                if self.stop.wait(max(0.0, due - time.monotonic())):
                    return
                self.pool.submit(self._report, job, 10 * (rounds + 1))
            rounds += 1


def kwok(
    namespace: str,
    n: int,
    *,
    steady: float,
    interval: float,
    log: Path,
    ids: tuple[Path, ...],
    profile: Path | None = None,
) -> dict[str, Any]:
    from kubernetes import client, config, watch

    kubeconfig, token, ca = ids
    config.load_kube_config()
    core = client.CoreV1Api()
    per_node = 20  # GPUs of a simulated node: ten 2-GPU jobs
    nodes = -(-2 * n // per_node)
    subprocess.run([str(ROOT / "hack/kwok-nodes.sh"), "20"], check=True, capture_output=True)
    bench_nodes(nodes, per_node)
    seed_namespace(namespace, volume=f"fto-{namespace}")
    kubectl("create", "role", SIM_TRAINER, "-n", namespace, "--verb=get,patch",
            "--resource=configmaps")  # fmt: skip
    kubectl("create", "rolebinding", SIM_TRAINER, "-n", namespace, f"--role={SIM_TRAINER}",
            f"--serviceaccount={BENCH_NS}:{SIM_TRAINER}")  # fmt: skip
    jobs_seen: dict[str, float] = {}
    first_pod: dict[str, float] = {}
    running: dict[str, set[str]] = {"prepare": set(), "train": set()}

    def watch_pods() -> None:
        for ev in watch.Watch().stream(core.list_namespaced_pod, namespace, timeout_seconds=3600):
            pod = ev["object"]
            job = (pod.metadata.labels or {}).get("finetune.dev/job")
            if job:
                first_pod.setdefault(job, time.monotonic())
                if pod.status and pod.status.phase == "Running":
                    stage = "prepare" if pod.metadata.name.endswith("-prepare") else "train"
                    running[stage].add(job)

    def watch_jobs() -> None:
        stream = watch.Watch().stream(
            client.CustomObjectsApi().list_namespaced_custom_object, "finetune.dev", "v1alpha1",
            namespace, "finetunejobs", timeout_seconds=3600,
        )  # fmt: skip
        for ev in stream:
            jobs_seen.setdefault(ev["object"]["metadata"]["name"], time.monotonic())

    for fn in (watch_jobs, watch_pods):
        threading.Thread(target=fn, daemon=True).start()
    lag = Lag(namespace)
    names = [f"k-{i}" for i in range(n)]
    trainers = Trainers(namespace, names, token, ca)
    time.sleep(1.0)  # the watches are established before the first apply (not a synchronisation)
    op = start_operator(namespace, log, kubeconfig, interval, profile)
    try:
        time.sleep(5.0)  # kopf's start-up (imports, first lists) is not the jobs' cost
        cpu0 = cpu_seconds(op.pid)
        t0 = time.monotonic()
        docs = [
            job_body(
                name,
                namespace,
                resources={"gpus": 2},
                podTemplate={
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "finetune.dev/simulated", "operator": "Exists"}],
                },
            )
            for name in names
        ]
        for k in range(0, n, 100):  # kubectl apply of 1,000 documents at once is slow client-side
            kubectl(
                "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs[k : k + 100])
            )
        applied = time.monotonic() - t0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and len(running["prepare"]) < n:
            time.sleep(1)
        every_prepare = time.monotonic() - t0
        latencies = [first_pod[j] - t for j, t in jobs_seen.items() if j in first_pod]
        # the prepare pods "run" on KWOK nodes and never report: report for them, then the
        # operator starts every job's 2-GPU training pod
        t1 = time.monotonic()
        trainers.prepare_all()
        while time.monotonic() < deadline and len(running["train"]) < n:
            time.sleep(1)
        every_train = time.monotonic() - t1
        cpu_start = cpu_seconds(op.pid) - cpu0
        # steady state: every job trains and reports every `interval` seconds; after one whole
        # round of reports (each job's first report is a change of state), count a window
        feeder = threading.Thread(target=trainers.run, args=(interval,), daemon=True)
        feeder.start()
        time.sleep(interval + 5.0)
        req0 = requests_of(IDENTITY), requests_of(TRAINERS)
        cpu1, w0 = cpu_seconds(op.pid), time.monotonic()
        time.sleep(steady)
        minutes = (time.monotonic() - w0) / 60
        op_req = requests_of(IDENTITY) - req0[0]
        trainer_req = requests_of(TRAINERS) - req0[1]
        cpu_steady = cpu_seconds(op.pid) - cpu1
        time.sleep(5.0)  # the window's last reports reach the status (or count as lagging)
        lags = lag.lags(since=w0)
        return {
            "jobs": n,
            "nodes": nodes,
            "gpus_per_node": per_node,
            "interval_s": interval,
            "running": len(running["train"]),
            "apply_seconds": round(applied, 1),
            "apply_to_pod_p50_s": round(pct(latencies, 0.5), 2),
            "apply_to_pod_p95_s": round(pct(latencies, 0.95), 2),
            "every_prepare_pod_running_seconds": round(every_prepare, 1),
            "prepared_to_every_training_pod_running_seconds": round(every_train, 1),
            "cpu_ms_per_job_start": round(1000 * cpu_start / n, 1),
            "steady_minutes": round(minutes, 2),
            "steady_operator_requests_per_job_minute": round(op_req / n / minutes, 2),
            "steady_trainer_requests_per_job_minute": round(trainer_req / n / minutes, 2),
            "steady_requests_per_job_minute": round((op_req + trainer_req) / n / minutes, 2),
            "steady_lag_p50_s": round(pct(lags, 0.5), 2),
            "steady_lag_p95_s": round(pct(lags, 0.95), 2),
            "steady_lag_samples": len(lags),
            "report_failures": trainers.failures,
            "steady_cpu_ms_per_job_minute": round(1000 * cpu_steady / n / minutes, 2),
            "operator_peak_rss_mib": peak_rss_mib(op.pid),
        }
    finally:
        trainers.stop.set()
        lag.stop.set()
        trainers.pool.shutdown(wait=False, cancel_futures=True)
        op.send_signal(signal.SIGTERM)
        op.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--latency-jobs", type=int, default=3)
    p.add_argument("--steady-seconds", type=float, default=120)
    p.add_argument(
        "--report-seconds",
        type=float,
        default=30.0,
        help="the simulated trainers' progress interval (the operator's default)",
    )
    p.add_argument("--write", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run the 1,000-job operator under cProfile; print its top functions at the end",
    )
    a = p.parse_args()
    # a SIGTERM (a timeout, the lock's holder) ends the run through the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("KUBECONFIG", "/run/fto-cluster/admin.kubeconfig")
    subprocess.run([str(ROOT / "hack/cluster-up.sh")], check=True, capture_output=True)
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(ROOT / "crds/finetune.dev_finetunejobs.yaml"),
    )
    # the stand-in image, built (dockerd and the Debian base started/made as needed) and loaded
    # into the cluster by the repo's own script, skipped when unchanged
    subprocess.run([str(ROOT / "hack/images.sh"), "standin"], check=True, capture_output=True)
    stamp = int(time.time())
    results: dict[str, Any] = {}
    logdir = Path(f"/tmp/fto-bench-{stamp}")
    logdir.mkdir()
    spaces = {label: f"bench-{label}-{stamp}" for label in ("real", "kwok")}
    with identities(logdir, list(spaces.values())) as ids:
        try:
            for label, ns in spaces.items():
                kubectl("create", "namespace", ns)
                log = logdir / f"{label}-operator.log"
                op = start_operator(ns, log, ids[0], 1.0) if label == "real" else None
                t0 = time.monotonic()
                try:
                    if label == "real":
                        results[label] = real_node(ns, a.latency_jobs)
                    else:
                        results[label] = kwok(
                            ns,
                            a.jobs,
                            steady=a.steady_seconds,
                            interval=a.report_seconds,
                            log=log,
                            ids=ids,
                            profile=logdir / "kwok-operator.prof" if a.profile else None,
                        )
                finally:
                    if op:
                        op.send_signal(signal.SIGTERM)
                        op.wait(timeout=30)
                    kubectl("delete", "namespace", ns, "--wait=false", check=False)
                print(f"phase {label}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
        finally:
            nodes = kubectl("get", "nodes", "-o", "name").split()
            ours = [x for x in nodes if x.startswith(f"node/{BENCH_NODE}")]
            if ours:
                kubectl("delete", "--wait=false", *ours, check=False)
            volume = f"persistentvolume/fto-{spaces['kwok']}"
            kubectl("delete", "--ignore-not-found", "--wait=false", volume, check=False)
    if a.profile:
        print_profile(logdir / "kwok-operator.prof")
    write(results, a)


def print_profile(path: Path, top: int = 40) -> None:
    """The profiled operator's costliest functions (own time and cumulative), to stderr."""
    import pstats

    if not path.exists():
        print(f"no profile at {path} (the operator did not exit cleanly)", file=sys.stderr)
        return
    for key in ("tottime", "cumulative"):
        pstats.Stats(str(path), stream=sys.stderr).sort_stats(key).print_stats(top)


def write(results: dict[str, Any], a: argparse.Namespace) -> None:
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
            "progress lag, trainer report in the ConfigMap → visible in status.progress, "
            "trainers reporting every second (target ≤ 1 s at p95)",
            f"p50 {r['progress_lag_p50_s']} s, p95 {r['progress_lag_p95_s']} s "
            f"({r['progress_samples']} reports)",
        ),
        (
            "API requests per job per minute over the jobs' whole life (start included), "
            "trainers reporting every second: operator + trainer",
            f"{r['operator_requests_per_job_minute']} + {r['trainer_requests_per_job_minute']}",
        ),
        (
            f"{k['jobs']} jobs × 2 GPUs on {k['nodes']} KWOK nodes of {k['gpus_per_node']} "
            "GPUs: apply → the job's first pod",
            f"p50 {k['apply_to_pod_p50_s']} s, p95 {k['apply_to_pod_p95_s']} s",
        ),
        (
            f"{k['jobs']} jobs: until every prepare pod runs; prepare reported → every "
            "training pod runs",
            f"{k['every_prepare_pod_running_seconds']} s; "
            f"{k['prepared_to_every_training_pod_running_seconds']} s "
            f"({k['running']} of {k['jobs']})",
        ),
        (
            "operator CPU per job to start it (reconciles until its training pod runs)",
            f"{k['cpu_ms_per_job_start']} ms",
        ),
        (
            f"**API requests per running job per minute**, {k['jobs']} jobs training, each "
            f"reporting every {k['interval_s']:g} s, {k['steady_minutes']} min window "
            "(target ≤ 5): all = operator + trainer",
            f"**{k['steady_requests_per_job_minute']}** = "
            f"{k['steady_operator_requests_per_job_minute']} + "
            f"{k['steady_trainer_requests_per_job_minute']}",
        ),
        (
            f"progress lag at {k['jobs']} running jobs (target ≤ 1 s at p95)",
            f"p50 {k['steady_lag_p50_s']} s, p95 {k['steady_lag_p95_s']} s "
            f"({k['steady_lag_samples']} reports; {k['report_failures']} failed)",
        ),
        (
            "operator CPU per running job per minute",
            f"{k['steady_cpu_ms_per_job_minute']} ms",
        ),
        (
            f"operator peak resident memory during the {k['jobs']}-job run (target ≤ 250 MiB)",
            f"{k['operator_peak_rss_mib']} MiB",
        ),
    ]
    command = (
        f"python bench/operator_bench.py --jobs {a.jobs} --latency-jobs {a.latency_jobs} "
        f"--steady-seconds {a.steady_seconds:g} --report-seconds {a.report_seconds:g} --write"
    )
    block = "\n".join(
        [
            BEGIN,
            "## Operator on the local cluster (CPU)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d}, {platform.node()}: {os.cpu_count()} CPU cores, "
            "Kubernetes v1.35.4 built by `hack/build-tools.sh`, the operator as a process "
            f"(`python -m finetune_operator`), stand-in trainer image. Command: `{command}`. "
            "Requests are counted at the apiserver (`apiserver_flowcontrol_dispatched_requests"
            "_total` of a FlowSchema each for the operator's ServiceAccount and the trainers'), "
            "reads and writes, watches and the leader Lease included. On KWOK nothing runs: "
            "the benchmark writes each job's prepare report, then every job's progress report "
            "every interval through the trainer's own `ConfigMapSink`.",
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

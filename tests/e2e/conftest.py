"""End-to-end fixtures: the real trainer and operator images on the node, the operator installed
with the Helm chart, and namespaces seeded with a tiny model and a synthetic dataset.

The operator watches a fixed list of namespaces (``NAMESPACES``), one per test, so it never acts
on namespaces of other tiers (the integration tests run their own operator process).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO_ROOT, Cluster, wait_until

RELEASE = "fto-e2e"
SYSTEM_NS = "fto-e2e-system"
TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "localhost/finetune-trainer:dev")
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "localhost/finetune-operator:dev")
# one namespace per test (the operator's watch list is fixed at install time)
TIERS = (
    "train", "suspend", "podkill", "oprestart", "queue", "bad", "prepare", "delete", "reject",
    "chaos", "storm", "ha", "multinode", "upgrade", "kueue", "podlogs", "export",
)  # fmt: skip
NAMESPACES = [f"fto-e2e-{n}" for n in TIERS]
VOLUMES = Path("/var/lib/fto-volumes")
PRIORITY_CLASSES = ("fto-e2e-high",)  # the jobs may name these (policy.allowedPriorityClasses)
RECORDS = 256


def helm_path() -> str:
    versions = (REPO_ROOT / "hack" / "versions.sh").read_text()
    ver = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in versions.splitlines()
            if line.startswith("export HELM_VERSION=")
        ),
        "3.22.0",
    )
    cache = os.environ.get("FTO_CACHE", str(Path.home() / ".cache" / "finetune-operator"))
    built = Path(cache) / "bin" / f"helm-v{ver.lstrip('v')}" / "helm"
    if not built.exists():
        subprocess.run([str(REPO_ROOT / "hack" / "build-tools.sh"), "helm"], check=True)
    return str(built) if built.exists() else "helm"


def image_id(image: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image],
                         capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    return out.stdout.strip().removeprefix("sha256:")[:12] or "unknown"


@pytest.fixture(scope="session")
def e2e_images(cluster: Cluster) -> None:
    """Trainer and operator images built and loaded into the node (cached by content)."""
    if not cluster.local:
        pytest.skip("the e2e tier loads locally built images into the local node")
    cluster.hack("images.sh", "trainer", "operator", timeout=3600)


@pytest.fixture(scope="session")
def operator_release(cluster: Cluster, e2e_images: None) -> Iterator[str]:
    """The operator installed with the Helm chart, watching ``NAMESPACES``; uninstalled after."""
    for ns in [SYSTEM_NS, *NAMESPACES]:
        cluster.kubectl("create", "namespace", ns, check=False)
    # the chart installs CRDs only when absent: apply the generated one so it is current
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f",
        str(REPO_ROOT / "crds" / "finetune.dev_finetunejobs.yaml"),
    )  # fmt: skip
    install_operator(cluster)
    yield RELEASE
    if os.environ.get("FTO_E2E_KEEP") != "1":
        env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
        subprocess.run([helm_path(), "uninstall", RELEASE, "-n", SYSTEM_NS, "--wait"],
                       env=env, capture_output=True, timeout=300, check=False)  # fmt: skip


LEASE_SECONDS = 6  # a killed leader is replaced within this (the chart's default is 15)


def install_operator(cluster: Cluster, replicas: int = 1) -> None:
    """``helm upgrade --install`` of the chart with the e2e values and ``replicas`` operator pods;
    returns when every replica is Ready."""
    repo, tag = OPERATOR_IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "replicaCount": replicas,
        "operator": {
            "watchNamespaces": NAMESPACES,
            "trainerImage": TRAINER_IMAGE,
            "trainerImagePullPolicy": "Never",
            "terminationGraceSeconds": 60,
            "progressIntervalSeconds": 0.5,
            "leaseDurationSeconds": LEASE_SECONDS,
        },
        "extraEnv": [
            {"name": "FTO_RESYNC_SECONDS", "value": "1"},
            {"name": "FTO_PREPARE_CPU", "value": "100m"},
        ],
        "metrics": {"enabled": False},
        "policy": {"allowedPriorityClasses": list(PRIORITY_CLASSES)},
        # a rebuilt image under the same tag rolls the operator pod
        "podAnnotations": {"finetune.dev/image-id": image_id(OPERATOR_IMAGE)},
    }
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
    chart = str(REPO_ROOT / "charts" / "finetune-operator")
    proc = subprocess.run(
        [helm_path(), "upgrade", "--install", RELEASE, chart,
         "-n", SYSTEM_NS, "--create-namespace", "-f", "-", "--wait", "--timeout", "5m"],
        check=False, input=json.dumps(values), capture_output=True, text=True, env=env, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, f"helm install failed:\n{proc.stdout}\n{proc.stderr}"
    cluster.kubectl("rollout", "status", f"deployment/{RELEASE}-finetune-operator", "-n",
                    SYSTEM_NS, "--timeout=180s")  # fmt: skip


def _clean(cluster: Cluster, ns: str) -> None:
    cluster.kubectl("delete", "ftj", "--all", "-n", ns, "--wait=true", "--timeout=120s",
                    check=False)  # fmt: skip
    cluster.kubectl("delete", "pods,pvc,cm", "--all", "-n", ns, "--grace-period=0", "--force",
                    "--wait=true", "--timeout=120s", check=False)  # fmt: skip

    # the local provisioner's path is <ns>-<claim>: a re-created claim must wait until the old
    # volume is reclaimed, or the reclaim removes the new claim's directory
    def volumes_gone() -> bool:
        pvs = json.loads(cluster.kubectl("get", "pv", "-o", "json"))["items"]
        return not [pv for pv in pvs if pv["spec"].get("claimRef", {}).get("namespace") == ns]

    wait_until(volumes_gone, timeout=120, interval=0.5, message=f"the volumes of {ns} reclaimed")


def seed(
    cluster: Cluster,
    ns: str,
    claim: str = "models",
    bad_row: int | None = None,
    extra: str = "",
) -> None:
    """PVC ``claim`` with tiny-llama/ (a tiny random llama) and data/train.jsonl (``RECORDS``
    synthetic alpaca records; with ``bad_row``, that 1-based line is replaced by a non-JSON one),
    then the shell commands ``extra`` (run in the trainer image, the claim at /models)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim_body(ns, claim)))
    script = (
        "set -e; finetune-trainer make-tiny-model /models/tiny-llama --arch llama; "
        f"finetune-trainer make-dataset /models/data/train.jsonl --records {RECORDS} --seed 0"
    )
    if bad_row:
        script += f"; sed -i '{bad_row}s/.*/{{not json/' /models/data/train.jsonl"
    if extra:
        script += f"; {extra}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"seed-{claim}", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [{
                "name": "seed", "image": TRAINER_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "m", "mountPath": "/models"}],
            }],
            "volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def ended() -> str:
        phase = cluster.kubectl("get", "pod", f"seed-{claim}", "-n", ns, "-o",
                                "jsonpath={.status.phase}")  # fmt: skip
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_until(ended, timeout=240, interval=1, message=f"seeding {ns}/{claim}")
    log = cluster.kubectl("logs", f"seed-{claim}", "-n", ns, check=False)
    assert phase == "Succeeded", f"seeding {ns}/{claim} failed:\n{log[-3000:]}"
    cluster.kubectl("delete", "pod", f"seed-{claim}", "-n", ns, "--wait=false")


def claim_body(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


@pytest.fixture
def e2e_ns(cluster: Cluster, operator_release: str, request: pytest.FixtureRequest) -> str:
    """The namespace of this test (marker ``@pytest.mark.e2e_ns("train")``), emptied first,
    with the claim ``models`` seeded and an empty claim ``out`` for outputs."""
    marker = request.node.get_closest_marker("e2e_ns")
    assert marker, "mark the test with @pytest.mark.e2e_ns(<name>)"
    ns = f"fto-e2e-{marker.args[0]}"
    assert ns in NAMESPACES, f"{ns} is not in the operator's watch list"
    _clean(cluster, ns)
    if marker.kwargs.get("seed", True):
        kw = marker.kwargs
        seed(cluster, ns, bad_row=kw.get("bad_row"), extra=kw.get("extra", ""))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim_body(ns, "out")))
    return ns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e_ns(name, seed=True, bad_row=None, extra=''): the test's namespace"
    )

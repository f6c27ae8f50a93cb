"""The cluster the other tiers rely on: a Ready 2-GPU node, real pods with logs, the scheduler's
GPU accounting, KWOK scale nodes, dynamic PVCs and in-cluster API access from pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.harness import (
    DEBIAN_IMAGE,
    GPU_RESOURCE,
    KWOK_TAINT,
    Cluster,
    Kube,
    create_yaml,
    pod_condition,
    pod_logs,
    wait_for_pod_phase,
    wait_until,
)

pytestmark = pytest.mark.integration

GPU_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3060",
    "nvidia.com/gpu.memory": "12288",
    "nvidia.com/gpu.count": "2",
}


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A one-container pod running ``script`` with python3 in the local Debian image."""
    container: dict[str, Any] = {
        "name": "main",
        "image": DEBIAN_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", script],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def real_gpu_node(kube: Kube, cluster: Cluster) -> client.V1Node:
    if cluster.node_name:
        return kube.core.read_node(cluster.node_name)
    nodes = [
        n
        for n in kube.core.list_node().items
        if (n.status.allocatable or {}).get(GPU_RESOURCE)
        and (n.metadata.labels or {}).get("type") != "kwok"
    ]
    if not nodes:
        pytest.skip(f"no node with {GPU_RESOURCE} allocatable")
    return nodes[0]


def test_node_ready_with_two_gpus_and_labels(kube: Kube, cluster: Cluster) -> None:
    node = real_gpu_node(kube, cluster)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True", ready.message
    assert node.status.allocatable[GPU_RESOURCE] == "2"
    if cluster.local:
        assert {k: node.metadata.labels.get(k) for k in GPU_LABELS} == GPU_LABELS


def test_pod_runs_to_completion_and_logs_are_readable(kube: Kube, namespace: str) -> None:
    create_yaml(
        kube.api_client,
        pod("hello", "import platform; print('hello from', platform.python_version())"),
        namespace,
    )
    wait_for_pod_phase(kube.core, namespace, "hello", timeout=120)
    assert pod_logs(kube.core, namespace, "hello").startswith("hello from 3.")


def test_pod_asking_for_three_gpus_stays_pending(kube: Kube, namespace: str) -> None:
    gpus = {"limits": {GPU_RESOURCE: "3"}, "requests": {GPU_RESOURCE: "3"}}
    create_yaml(
        kube.api_client, pod("greedy", "print(1)", container={"resources": gpus}), namespace
    )

    def unschedulable() -> client.V1PodCondition | None:
        p = kube.core.read_namespaced_pod("greedy", namespace)
        cond = pod_condition(p, "PodScheduled")
        return cond if cond and cond.status == "False" and cond.message else None

    cond = wait_until(unschedulable, timeout=60, message="the scheduler to reject the pod")
    assert cond.reason == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in cond.message
    assert kube.core.read_namespaced_pod("greedy", namespace).status.phase == "Pending"


def test_kwok_gpu_nodes_take_two_gpu_pods(
    kube: Kube, namespace: str, kwok_nodes: Callable[[int], list[str]]
) -> None:
    names = kwok_nodes(10)
    for name in names:
        node = kube.core.read_node(name)
        assert node.status.allocatable[GPU_RESOURCE] == "2"
        assert (
            node.metadata.labels["nvidia.com/gpu.product"] == GPU_LABELS["nvidia.com/gpu.product"]
        )
    gpus = {"limits": {GPU_RESOURCE: "2"}, "requests": {GPU_RESOURCE: "2"}}
    create_yaml(
        kube.api_client,
        pod(
            "sim",
            "print(1)",
            container={"resources": gpus},
            nodeSelector={"type": "kwok"},
            tolerations=[{**KWOK_TAINT, "operator": "Equal"}],
        ),
        namespace,
    )
    p = wait_for_pod_phase(kube.core, namespace, "sim", phases=("Running",), timeout=60)
    # on a simulated GPU node (the cluster may hold more of them than this test asked for)
    landed = kube.core.read_node(p.spec.node_name)
    assert landed.metadata.labels.get("type") == "kwok", p.spec.node_name
    assert landed.status.allocatable[GPU_RESOURCE] == "2"
    assert p.status.pod_ip.startswith("198.18.")


def test_default_storage_class_binds_and_uid_1000_writes(
    kube: Kube, namespace: str, cluster: Cluster
) -> None:
    create_yaml(
        kube.api_client,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "work"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    wait_until(
        lambda: (
            kube.core.read_namespaced_persistent_volume_claim("work", namespace).status.phase
            == "Bound"
        ),
        timeout=60,
        message="the PVC to bind",
    )
    script = (
        "import os; open('/work/out.txt','w').write(str(os.getuid())); "
        "print(open('/work/out.txt').read())"
    )
    create_yaml(
        kube.api_client,
        pod(
            "writer",
            script,
            securityContext={"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True},
            container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            volumes=[{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}],
        ),
        namespace,
    )
    wait_for_pod_phase(kube.core, namespace, "writer", timeout=120)
    assert pod_logs(kube.core, namespace, "writer").strip() == "1000"
    if cluster.local:
        assert Path(f"/var/lib/fto-volumes/{namespace}-work/out.txt").read_text() == "1000"


IN_CLUSTER_SCRIPT = """
import json, os, ssl, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount'
host, port = os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT']
ctx = ssl.create_default_context(cafile=sa + '/ca.crt')
req = urllib.request.Request(f'https://{host}:{port}/version')
req.add_header('Authorization', 'Bearer ' + open(sa + '/token').read())
print(json.dumps({'host': host, 'port': port,
                  'version': json.load(urllib.request.urlopen(req, context=ctx, timeout=10))}))
"""


def test_pod_reaches_the_api_server_in_cluster(kube: Kube, namespace: str) -> None:
    create_yaml(kube.api_client, pod("incluster", IN_CLUSTER_SCRIPT), namespace)
    wait_for_pod_phase(kube.core, namespace, "incluster", timeout=120)
    out = json.loads(pod_logs(kube.core, namespace, "incluster").strip().splitlines()[-1])
    assert out["version"]["gitVersion"].startswith("v1.")
    service = kube.core.read_namespaced_service("kubernetes", "default")
    assert out["host"] == service.spec.cluster_ip

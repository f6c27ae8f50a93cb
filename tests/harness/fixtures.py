"""pytest fixtures of the harness; tests/conftest.py imports them."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from tests.harness.cluster import Cluster, Kube, ensure_cluster
from tests.harness.wait import wait_until


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The cluster under test: a reachable $KUBECONFIG, else the local one (started if needed).

    Sets KUBECONFIG for the session so subprocesses (kubectl, the operator) use the same cluster.
    """
    try:
        found = ensure_cluster()
    except PermissionError as e:
        pytest.skip(str(e))
    os.environ["KUBECONFIG"] = found.kubeconfig
    return found


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    """API clients (core, apps, batch, rbac, storage, custom, apiext) for the cluster."""
    return cluster.kube()


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, ready for pods (its default ServiceAccount
    exists); deleted after the test."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"fto-test": "true"}))
    )
    wait_until(
        lambda: kube.core.read_namespaced_service_account("default", name),
        timeout=60,
        interval=0.2,
        message=f"the default ServiceAccount in {name}",
    )
    yield name
    try:
        kube.core.delete_namespace(name, propagation_policy="Background", grace_period_seconds=0)
    except client.ApiException as e:
        if e.status != 404:
            raise


@pytest.fixture(scope="session")
def kwok_nodes(cluster: Cluster) -> Callable[[int], list[str]]:
    """Factory: ``kwok_nodes(n)`` makes sure simulated GPU nodes kwok-gpu-0..n-1 exist and are
    Ready (2 GPUs each, tainted finetune.dev/simulated=true:NoSchedule); returns their names."""

    def make(n: int) -> list[str]:
        if not cluster.local:
            pytest.skip("KWOK nodes are only added to the local cluster")
        cluster.hack("kwok-nodes.sh", str(n), timeout=1800)
        return [f"kwok-gpu-{i}" for i in range(n)]

    return make


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Iterator[str]:
    """A real Kueue running on the host against the local cluster (hack/kueue.sh up), stopped
    after the session; its pod integration manages the namespaces labelled with the returned
    ``key=value``."""
    if not cluster.local:
        pytest.skip("Kueue is run on the host against the local cluster only")
    cluster.hack("kueue.sh", "up", timeout=1800)
    yield "finetune.dev/kueue=enabled"
    cluster.hack("kueue.sh", "down", timeout=120)

"""Test harness for a real Kubernetes: the local cluster (hack/cluster-up.sh) or $KUBECONFIG's.

Fixtures (registered by tests/conftest.py): ``cluster`` (session), ``kube`` (session, API
clients), ``namespace`` (a fresh namespace per test, deleted afterwards), ``kwok_nodes``
(factory: ``kwok_nodes(10)`` makes sure 10 simulated GPU nodes exist; local cluster only),
``kueue`` (session: a real Kueue on the host, hack/kueue.sh; local cluster only).
"""

from tests.harness.cluster import (
    DEBIAN_IMAGE,
    GPU_RESOURCE,
    KWOK_TAINT,
    LOCAL_KUBECONFIG,
    REPO_ROOT,
    Cluster,
    Kube,
    ensure_cluster,
    load_image,
)
from tests.harness.resources import (
    apply_yaml,
    create_yaml,
    delete_yaml,
    pod_condition,
    pod_logs,
    wait_for_pod_phase,
)
from tests.harness.wait import wait_until

__all__ = [
    "DEBIAN_IMAGE",
    "GPU_RESOURCE",
    "KWOK_TAINT",
    "LOCAL_KUBECONFIG",
    "REPO_ROOT",
    "Cluster",
    "Kube",
    "apply_yaml",
    "create_yaml",
    "delete_yaml",
    "ensure_cluster",
    "load_image",
    "pod_condition",
    "pod_logs",
    "wait_for_pod_phase",
    "wait_until",
]

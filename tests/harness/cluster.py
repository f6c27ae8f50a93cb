"""Find or start the cluster the tests run against and build API clients for it.

Order: a reachable ``$KUBECONFIG`` (kind, k3s, a real cluster: used as is, nothing is built);
else the local cluster's kubeconfig if it answers; else ``hack/cluster-up.sh`` (root only).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import urllib3
from kubernetes import client, config

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_KUBECONFIG = "/run/fto-cluster/admin.kubeconfig"
DEBIAN_IMAGE = "localhost/debian:bookworm"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_TAINT = {"key": "finetune.dev/simulated", "value": "true", "effect": "NoSchedule"}


@dataclass
class Kube:
    """API clients sharing one configured ApiClient."""

    api_client: client.ApiClient

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @cached_property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @cached_property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @cached_property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api_client)

    @cached_property
    def storage(self) -> client.StorageV1Api:
        return client.StorageV1Api(self.api_client)

    @cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @cached_property
    def apiext(self) -> client.ApiextensionsV1Api:
        return client.ApiextensionsV1Api(self.api_client)

    @cached_property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api_client)


@dataclass
class Cluster:
    """The cluster under test. ``local`` is True for the one hack/cluster-up.sh runs."""

    kubeconfig: str
    local: bool
    node_name: str | None = "kt-node-1"
    env: dict[str, str] = field(default_factory=dict)

    def kube(self) -> Kube:
        return Kube(config.new_client_from_config(config_file=self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run kubectl against this cluster and return its stdout."""
        exe = _kubectl_path()
        proc = subprocess.run(
            [exe, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def hack(self, script: str, *args: str, timeout: float = 900) -> str:
        """Run one of the repository's hack/ scripts (local cluster helpers)."""
        proc = subprocess.run(
            [str(REPO_ROOT / "hack" / script), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"hack/{script} {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
        return proc.stdout


def _kubectl_path() -> str:
    versions = (REPO_ROOT / "hack" / "versions.sh").read_text()
    k8s = next(
        line.split("=", 1)[1].strip()
        for line in versions.splitlines()
        if line.startswith("export K8S_VERSION=")
    )
    cache = os.environ.get("FTO_CACHE", str(Path.home() / ".cache" / "finetune-operator"))
    built = Path(cache) / "bin" / f"k8s-v{k8s}" / "kubectl"
    return str(built) if built.exists() else "kubectl"


def reachable(kubeconfig: str, timeout: float = 5.0) -> bool:
    """True when the kubeconfig's API server answers /version."""
    if not Path(kubeconfig).is_file():
        return False
    try:
        api = config.new_client_from_config(config_file=kubeconfig)
        api.configuration.retries = False
        client.VersionApi(api).get_code(_request_timeout=timeout)
    except (OSError, urllib3.exceptions.HTTPError, client.ApiException, config.ConfigException):
        return False
    return True


def ensure_cluster() -> Cluster:
    """Return the cluster to test against, starting the local one if nothing else answers."""
    env_kc = os.environ.get("KUBECONFIG", "")
    if env_kc and env_kc != LOCAL_KUBECONFIG and reachable(env_kc):
        return Cluster(kubeconfig=env_kc, local=False, node_name=None)
    if not reachable(LOCAL_KUBECONFIG) or not _local_healthy():
        if os.geteuid() != 0:
            raise PermissionError(
                "no reachable $KUBECONFIG and starting the local cluster needs root "
                "(run `sudo make cluster-up` or point KUBECONFIG at a cluster)"
            )
        proc = subprocess.run(
            [str(REPO_ROOT / "hack" / "cluster-up.sh")],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"hack/cluster-up.sh failed:\n{proc.stderr[-6000:]}")
    return Cluster(kubeconfig=LOCAL_KUBECONFIG, local=True)


def _local_healthy() -> bool:
    proc = subprocess.run(
        [str(REPO_ROOT / "hack" / "cluster-status.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return proc.returncode == 0


def load_image(cluster: Cluster, image: str) -> None:
    """Make a locally built docker image available on the local cluster's node."""
    if cluster.local:
        cluster.hack("image-load.sh", image)

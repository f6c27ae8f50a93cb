"""Apply/create/delete manifests and read pods, on top of the kubernetes dynamic client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from tests.harness.wait import wait_until

FIELD_MANAGER = "fto-tests"
Manifest = dict[str, Any]
_DYNAMIC: dict[int, DynamicClient] = {}


def _dynamic(api_client: client.ApiClient) -> DynamicClient:
    # discovery is slow; keep one dynamic client per ApiClient
    key = id(api_client)
    if key not in _DYNAMIC:
        _DYNAMIC[key] = DynamicClient(api_client)
    return _DYNAMIC[key]


def _docs(manifests: str | Manifest | Iterable[Manifest]) -> list[Manifest]:
    if isinstance(manifests, str):
        return [d for d in yaml.safe_load_all(manifests) if d]
    if isinstance(manifests, dict):
        return [manifests]
    return list(manifests)


def _resource(api_client: client.ApiClient, doc: Manifest) -> Any:
    return _dynamic(api_client).resources.get(api_version=doc["apiVersion"], kind=doc["kind"])


def apply_yaml(
    api_client: client.ApiClient,
    manifests: str | Manifest | Iterable[Manifest],
    namespace: str | None = None,
) -> list[Manifest]:
    """Server-side apply each document (YAML text, a dict or dicts); return the live objects.

    Namespaced kinds without ``metadata.namespace`` go to ``namespace``.
    """
    out = []
    for doc in _docs(manifests):
        res = _resource(api_client, doc)
        ns = doc.get("metadata", {}).get("namespace") or (namespace if res.namespaced else None)
        obj = res.server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=ns,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        out.append(obj.to_dict())
    return out


def create_yaml(
    api_client: client.ApiClient,
    manifests: str | Manifest | Iterable[Manifest],
    namespace: str | None = None,
) -> list[Manifest]:
    """Create each document (fails if it exists); return the created objects."""
    out = []
    for doc in _docs(manifests):
        res = _resource(api_client, doc)
        ns = doc.get("metadata", {}).get("namespace") or (namespace if res.namespaced else None)
        out.append(res.create(body=doc, namespace=ns).to_dict())
    return out


def delete_yaml(
    api_client: client.ApiClient,
    manifests: str | Manifest | Iterable[Manifest],
    namespace: str | None = None,
    wait: float = 0,
) -> None:
    """Delete each document (absent is fine); with ``wait`` > 0, wait until they are gone."""
    gone = []
    for doc in _docs(manifests):
        res = _resource(api_client, doc)
        ns = doc.get("metadata", {}).get("namespace") or (namespace if res.namespaced else None)
        name = doc["metadata"]["name"]
        try:
            res.delete(name=name, namespace=ns)
        except NotFoundError:
            continue
        gone.append((res, name, ns))

    def all_gone() -> bool:
        for res, name, ns in gone:
            try:
                res.get(name=name, namespace=ns)
            except NotFoundError:
                continue
            return False
        return True

    if wait > 0:
        wait_until(all_gone, timeout=wait, message=f"deletion of {len(gone)} object(s)")


def pod_logs(core: client.CoreV1Api, namespace: str, pod: str, container: str | None = None) -> str:
    """The pod's log through the API (what `kubectl logs` shows)."""
    kwargs = {"container": container} if container else {}
    return str(core.read_namespaced_pod_log(pod, namespace, **kwargs))


def pod_condition(pod: client.V1Pod, type_: str) -> client.V1PodCondition | None:
    for cond in pod.status.conditions or []:
        if cond.type == type_:
            return cond
    return None


def wait_for_pod_phase(
    core: client.CoreV1Api,
    namespace: str,
    pod: str,
    phases: Iterable[str] = ("Succeeded",),
    timeout: float = 120,
) -> client.V1Pod:
    """Wait until the pod is in one of ``phases``; a Failed pod ends the wait early with its
    container states in the error (unless Failed was asked for)."""
    wanted = set(phases)

    def check() -> client.V1Pod | None:
        p = core.read_namespaced_pod(pod, namespace)
        if p.status.phase in wanted:
            return p
        if p.status.phase == "Failed":
            raise AssertionError(f"pod {namespace}/{pod} failed: {p.status.container_statuses}")
        return None

    def describe() -> str:
        try:
            p = core.read_namespaced_pod(pod, namespace)
            return (
                f"pod {namespace}/{pod} to be {sorted(wanted)} (now {p.status.phase}: {p.status})"
            )
        except client.ApiException as e:
            return f"pod {namespace}/{pod} to be {sorted(wanted)} ({e.reason})"

    try:
        return wait_until(check, timeout=timeout, message=describe)
    except TimeoutError as e:
        if isinstance(e.__cause__, AssertionError):
            raise e.__cause__ from None
        raise

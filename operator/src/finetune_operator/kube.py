"""The one module that talks to the Kubernetes API (the official client, synchronous).

Objects go in and come out as plain camelCase dicts, the shape the pure modules work with: the
client's configuration, authentication and REST layer are used, its generated models are not.
Idempotence lives here: create-or-get (409 is fine), delete (404 is fine). API errors become
this module's own exceptions (only the handlers translate them into kopf's):

==================  =============================================================================
``NotFoundError``   404
``ConflictError``   409 (exists already, or changed meanwhile); ``NotOwnedError`` when a
                    child's name is taken by an object the job does not own
``RejectedError``   any other 4xx but 401 and 429: the request itself is refused (400 and 422
                    invalid, 403 forbidden: RBAC, PodSecurity); ``ChildRejectedError`` when
                    creating a child, naming its kind and name
``TransientError``  try again later: 5xx, 401, 429, a 403 for an exceeded ResourceQuota,
                    timeouts, connection resets
==================  =============================================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config

from finetune_operator import models as m
from finetune_operator import security

log = logging.getLogger(__name__)

_api: client.ApiClient | None = None
_TIMEOUT = (10.0, 60.0)


def api() -> client.ApiClient:
    """The shared client: in-cluster config when available, else $KUBECONFIG."""
    global _api
    if _api is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        _api = client.ApiClient()
    return _api


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (None: no answer), ``detail`` the
    apiserver's own message."""

    def __init__(self, what: str, status: int | None, detail: str) -> None:
        super().__init__(f"{what}: {status} {detail}" if status else f"{what}: {detail}")
        self.status, self.detail = status, detail


class NotFoundError(KubeError):
    """The object does not exist (404)."""


class ConflictError(KubeError):
    """The object already exists or changed meanwhile (409)."""


class RejectedError(KubeError):
    """The apiserver refused the request itself (400, 403, 422…): repeating it cannot help."""


class ChildRejectedError(RejectedError):
    """Creating one of the job's children was refused."""

    def __init__(self, exc: RejectedError, kind: str, name: str) -> None:
        super().__init__(f"create {kind} {name}", exc.status, exc.detail)
        self.kind, self.name = kind, name


class TransientError(KubeError):
    """No answer, or an answer that may change (5xx, 401, 429, quota): try again later."""


def _error(what: str, status: int, detail: str) -> KubeError:
    if status == 404:
        return NotFoundError(what, status, detail)
    if status == 409:
        return ConflictError(what, status, detail)
    if status == 403 and "exceeded quota" in detail:
        return TransientError(what, status, detail)
    if 400 <= status < 500 and status not in (401, 429):
        return RejectedError(what, status, detail)
    return TransientError(what, status, detail)


class NotOwnedError(Exception):
    """A child's name is taken by an object the job does not own (the job fails NameConflict)."""


def _message(data: bytes | None, fallback: str) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or fallback)
    except (ValueError, AttributeError):
        return fallback


def request(
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> dict[str, Any]:
    """One API call with plain JSON in and out; errors raised as this module's exceptions."""
    c = api()
    what = f"{method} {path}"
    try:
        method_, url, headers, body_, _ = c.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params={"Content-Type": content_type, "Accept": accept},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = c.call_api(
            method_, url, header_params=headers, body=body_, _request_timeout=_TIMEOUT
        )
        data: bytes | None = resp.read()  # type: ignore[no-untyped-call]
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(what, None, str(exc)) from exc
    status = int(resp.status)
    if 200 <= status < 300:
        out: dict[str, Any] = json.loads(data or b"{}")
        return out
    raise _error(what, status, _message(data, str(resp.reason)))


def _ns_path(api_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


_PLURALS = {
    "Pod": "pods",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Event": "events",
    m.KIND: m.PLURAL,
}


# ------------------------------------------------------------------------------- FineTuneJobs


def get_job(namespace: str, name: str) -> dict[str, Any]:
    return request("GET", _ns_path(m.API_VERSION, namespace, m.PLURAL, name))


PAGE = 250  # items per LIST request: a list of 1,000 jobs or pods never sits in memory whole


def _pages(path: str, query: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of a LIST, ``PAGE`` items per request (the apiserver's ``continue`` token)."""
    query = {**(query or {}), "limit": str(PAGE)}
    while True:
        obj = request("GET", path, query=query)
        yield from obj.get("items") or []
        token = (obj.get("metadata") or {}).get("continue")
        if not token:
            return
        query["continue"] = token


def list_jobs(namespace: str | None) -> Iterator[dict[str, Any]]:
    """FineTuneJobs of one namespace, or of all when ``None``."""
    path = (
        _ns_path(m.API_VERSION, namespace, m.PLURAL)
        if namespace
        else f"/apis/{m.API_VERSION}/{m.PLURAL}"
    )
    return _pages(path)


def patch_job_status(
    namespace: str, name: str, patch: dict[str, Any], resource_version: str | None = None
) -> dict[str, Any]:
    """Merge-patch ``.status`` through the status subresource; with ``resource_version``, only
    if the job did not change since it was read (else ``ConflictError``). The job as written."""
    path = _ns_path(m.API_VERSION, namespace, m.PLURAL, name) + "/status"
    body: dict[str, Any] = {"status": patch}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return request("PATCH", path, body, content_type="application/merge-patch+json")


def delete_job(namespace: str, name: str) -> None:
    with contextlib.suppress(NotFoundError):
        request(
            "DELETE",
            _ns_path(m.API_VERSION, namespace, m.PLURAL, name),
            {"propagationPolicy": "Background"},
        )


# ---------------------------------------------------------------------------------- children


def create_or_get(body: dict[str, Any]) -> bool:
    """Create ``body``; an existing object of that name is fine only if this job owns it
    (``security.adoption``): else ``NotOwnedError``, or a retry while the garbage collector
    removes an earlier namesake's. True when created now."""
    meta = body["metadata"]
    path = _ns_path(body["apiVersion"], meta["namespace"], _PLURALS[body["kind"]])
    try:
        request("POST", path, body)
    except ConflictError:
        existing = request("GET", f"{path}/{quote(meta['name'])}")
        verdict = security.adoption(existing, body)
        if verdict == "wait":
            raise TransientError(
                f"create {body['kind']} {meta['name']}",
                409,
                "an earlier job's object of this name is being deleted",
            ) from None
        if verdict == "conflict":
            raise NotOwnedError(
                f'{body["kind"].lower()} "{meta["name"]}" already exists and does not belong to '
                "this job; delete or rename it, or rename the job"
            ) from None
        return False
    except RejectedError as exc:
        raise ChildRejectedError(exc, body["kind"], meta["name"]) from exc
    log.info("created %s/%s", body["kind"], meta["name"])
    return True


def apply_config_map(body: dict[str, Any]) -> None:
    """Create the ConfigMap or overwrite its data (the trainer config changes per attempt)."""
    if create_or_get(body):
        return
    meta = body["metadata"]
    request(
        "PATCH",
        _ns_path("v1", meta["namespace"], "configmaps", meta["name"]),
        {"data": body["data"]},
        content_type="application/merge-patch+json",
    )


def clear_config_map_keys(namespace: str, name: str, keys: tuple[str, ...]) -> None:
    """Remove keys from a ConfigMap's data (a missing ConfigMap is fine)."""
    with contextlib.suppress(NotFoundError):
        request(
            "PATCH",
            _ns_path("v1", namespace, "configmaps", name),
            {"data": dict.fromkeys(keys)},
            content_type="application/merge-patch+json",
        )


def get_config_map(namespace: str, name: str) -> dict[str, Any] | None:
    """A ConfigMap, or None when it does not exist."""
    try:
        return request("GET", _ns_path("v1", namespace, "configmaps", name))
    except NotFoundError:
        return None


def list_labelled(namespace: str | None, plural: str, selector: str) -> Iterator[dict[str, Any]]:
    """Core objects (``plural``: pods, configmaps) matching a label selector, in one namespace
    or (``None``) in all."""
    path = _ns_path("v1", namespace, plural) if namespace else f"/api/v1/{plural}"
    return _pages(path, {"labelSelector": selector})


_RBAC = "rbac.authorization.k8s.io/v1"
_API_VERSIONS = {"Role": _RBAC, "RoleBinding": _RBAC}
# the apiserver leaves out spec, data and status: names and labels only, whatever the objects hold
_METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def list_names(kind: str, namespace: str | None, label_selector: str) -> set[tuple[str, str]]:
    """(namespace, name) of the ``kind`` objects matching ``label_selector``, in one namespace
    or in all (``None``): one metadata-only LIST."""
    api_version, plural = _API_VERSIONS.get(kind, "v1"), _PLURALS[kind]
    if namespace:
        path = _ns_path(api_version, namespace, plural)
    else:
        path = f"/api/v1/{plural}" if api_version == "v1" else f"/apis/{api_version}/{plural}"
    obj = request("GET", path, query={"labelSelector": label_selector}, accept=_METADATA_ONLY)
    return {
        (str(meta.get("namespace")), str(meta.get("name")))
        for meta in (item.get("metadata") or {} for item in obj.get("items") or [])
    }


def exists(kind: str, namespace: str, name: str) -> bool:
    """Whether a namespaced object (PersistentVolumeClaim, ConfigMap…) exists."""
    try:
        request("GET", _ns_path("v1", namespace, _PLURALS[kind], name))
    except NotFoundError:
        return False
    return True


def list_pods(namespace: str, job: str) -> list[dict[str, Any]]:
    obj = request(
        "GET", _ns_path("v1", namespace, "pods"), query={"labelSelector": f"{m.LABEL_JOB}={job}"}
    )
    items: list[dict[str, Any]] = obj.get("items") or []
    return items


def delete_pod(namespace: str, name: str, grace_seconds: int | None = None) -> None:
    """Delete a pod; ``None`` keeps the pod's own terminationGracePeriodSeconds."""
    body: dict[str, Any] = {}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    with contextlib.suppress(NotFoundError):
        request("DELETE", _ns_path("v1", namespace, "pods", name), body or None)


def get_workload(api_version: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A Kueue Workload (read-only); None when it (or Kueue's API) does not exist."""
    try:
        return request("GET", _ns_path(api_version, namespace, "workloads", name))
    except NotFoundError:
        return None


def list_nodes() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = request("GET", "/api/v1/nodes").get("items") or []
    return items


# ------------------------------------------------------------------------------------- leases

_LEASE_API = "coordination.k8s.io/v1"


def get_lease(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return request("GET", _ns_path(_LEASE_API, namespace, "leases", name))
    except NotFoundError:
        return None


def write_lease(
    namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
) -> None:
    """Create the Lease (no ``resource_version``) or replace it only if unchanged since read;
    a lost race is ``ConflictError``."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    body = {"apiVersion": _LEASE_API, "kind": "Lease", "metadata": meta, "spec": spec}
    if resource_version is None:
        request("POST", _ns_path(_LEASE_API, namespace, "leases"), body)
        return
    meta["resourceVersion"] = resource_version
    request("PUT", _ns_path(_LEASE_API, namespace, "leases", name), body)


# ------------------------------------------------------------------------------------- events


def emit_event(job: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """A core/v1 Event about the job; failures to record one are logged, never raised."""
    meta = job.get("metadata") or {}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": m.API_VERSION,
            "kind": m.KIND,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "eventTime": None,
        "count": 1,
        "source": {"component": "finetune-operator"},
        "reportingComponent": "finetune.dev/operator",
        "reportingInstance": "finetune-operator",
    }
    try:
        request("POST", _ns_path("v1", str(meta.get("namespace")), "events"), body)
    except KubeError as exc:
        log.warning("could not record event %s: %s", reason, exc)

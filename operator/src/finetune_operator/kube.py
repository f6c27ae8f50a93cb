"""The one module that talks to the Kubernetes API (the official client, synchronous).

Objects go in and come out as plain camelCase dicts, the shape the pure modules work with: the
client's configuration, authentication and REST layer are used, its generated models are not.
Idempotence lives here: create-or-get (409 is fine), delete (404 is fine). API errors become
``kopf.TemporaryError`` (retry later: 5xx, 429, timeouts, connection resets) or
``kopf.PermanentError`` (the request itself is wrong: 400, 422).
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kopf
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


class NotFoundError(Exception):
    """The object does not exist (404)."""


class ConflictError(Exception):
    """The object already exists or changed meanwhile (409)."""


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
) -> dict[str, Any]:
    """One API call with plain JSON in and out; errors mapped for kopf."""
    c = api()
    what = f"{method} {path}"
    try:
        method_, url, headers, body_, _ = c.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = c.call_api(
            method_, url, header_params=headers, body=body_, _request_timeout=_TIMEOUT
        )
        data: bytes | None = resp.read()  # type: ignore[no-untyped-call]
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise kopf.TemporaryError(f"{what}: {exc}", delay=5.0) from exc
    status = int(resp.status)
    if 200 <= status < 300:
        out: dict[str, Any] = json.loads(data or b"{}")
        return out
    msg = f"{what}: {status} {_message(data, str(resp.reason))}"
    if status == 404:
        raise NotFoundError(msg)
    if status == 409:
        raise ConflictError(msg)
    if status in (400, 422):
        raise kopf.PermanentError(msg)
    raise kopf.TemporaryError(msg, delay=30.0 if status in (401, 403) else 5.0)


def _ns_path(api_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


_PLURALS = {
    "Pod": "pods",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Event": "events",
    m.KIND: m.PLURAL,
}


# ------------------------------------------------------------------------------- FineTuneJobs


def get_job(namespace: str, name: str) -> dict[str, Any]:
    return request("GET", _ns_path(m.API_VERSION, namespace, m.PLURAL, name))


def list_jobs(namespace: str | None) -> list[dict[str, Any]]:
    """FineTuneJobs of one namespace, or of all when ``None``."""
    path = (
        _ns_path(m.API_VERSION, namespace, m.PLURAL)
        if namespace
        else f"/apis/{m.API_VERSION}/{m.PLURAL}"
    )
    items: list[dict[str, Any]] = request("GET", path).get("items") or []
    return items


def patch_job_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch ``.status`` through the status subresource."""
    path = _ns_path(m.API_VERSION, namespace, m.PLURAL, name) + "/status"
    request("PATCH", path, {"status": patch}, content_type="application/merge-patch+json")


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
            raise kopf.TemporaryError(
                f"{body['kind']} {meta['name']} of an earlier job of this name is being deleted",
                delay=2.0,
            ) from None
        if verdict == "conflict":
            raise NotOwnedError(
                f'{body["kind"].lower()} "{meta["name"]}" already exists and does not belong to '
                "this job; delete or rename it, or rename the job"
            ) from None
        return False
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


def read_config_map_data(namespace: str, name: str) -> dict[str, str] | None:
    try:
        obj = request("GET", _ns_path("v1", namespace, "configmaps", name))
    except NotFoundError:
        return None
    data: dict[str, str] = obj.get("data") or {}
    return data


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


def list_nodes() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = request("GET", "/api/v1/nodes").get("items") or []
    return items


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
    except (kopf.TemporaryError, kopf.PermanentError, NotFoundError, ConflictError) as exc:
        log.warning("could not record event %s: %s", reason, exc)

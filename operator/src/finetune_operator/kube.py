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
``CommandError``    a command run in a pod (exec) failed or ran past its time
==================  =============================================================================

The operator talks through ``api()`` (in-cluster, else $KUBECONFIG); the kubectl plugin points
this module at the cluster its flags name (``load``, then ``use``) and maps these exceptions to
its own messages (cli/api.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
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
_timeout: float | tuple[float, float] = (10.0, 60.0)  # (connect, read) or in all, per request


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


def use(api_client: client.ApiClient, timeout: float | tuple[float, float]) -> None:
    """Send this module's calls through ``api_client`` from now on, each limited to
    ``timeout`` seconds (streams excepted)."""
    global _api, _timeout
    _api, _timeout = api_client, timeout


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


class CommandError(KubeError):
    """A command run in a pod failed, could not start or ran past its time (``detail`` says
    which)."""


class NotOwnedError(Exception):
    """A child's name is taken by an object the job does not own (the job fails NameConflict)."""


def _message(data: bytes | None, fallback: str) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or fallback)
    except (ValueError, AttributeError):
        return fallback


def _send(
    method: str,
    path: str,
    body: Any,
    *,
    query: dict[str, str] | None,
    content_type: str,
    accept: str,
    timeout: float | tuple[float, float] | None,
) -> Any:
    """The client's RESTResponse, its body not read yet."""
    c = api()
    method_, url, headers, body_, _ = c.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query.items()) if query else None,
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body,
        auth_settings=["BearerToken"],
    )
    return c.call_api(method_, url, header_params=headers, body=body_, _request_timeout=timeout)


def _raw(
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict[str, str] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> bytes:
    """The body of one API call's answer; errors raised as this module's exceptions."""
    what = f"{method} {path}"
    try:
        resp = _send(
            method,
            path,
            body,
            query=query,
            content_type=content_type,
            accept=accept,
            timeout=_timeout,
        )
        data: bytes | None = resp.read()
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(what, None, str(exc)) from exc
    status = int(resp.status)
    if 200 <= status < 300:
        return data or b""
    raise _error(what, status, _message(data, str(resp.reason)))


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
    out: dict[str, Any] = json.loads(
        _raw(method, path, body, query=query, content_type=content_type, accept=accept) or b"{}"
    )
    return out


def _stream(path: str, query: dict[str, str]) -> Iterator[bytes]:
    """A GET whose answer keeps coming (a followed log, a watch), chunk by chunk, with no time
    limit of ours (the apiserver's ``timeoutSeconds``, or the container's end, closes it)."""
    what = f"GET {path}"
    try:
        resp = _send(
            "GET",
            path,
            None,
            query=query,
            content_type="application/json",
            accept="*/*",
            timeout=None,
        )
        status = int(resp.status)
        if not 200 <= status < 300:
            raise _error(what, status, _message(resp.read(), str(resp.reason)))
        try:
            yield from resp.response.stream(4096)
        finally:
            resp.response.release_conn()
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(what, None, str(exc)) from exc


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


def _jobs_path(namespace: str | None) -> str:
    """The FineTuneJobs of one namespace, or of all when ``None``."""
    if namespace:
        return _ns_path(m.API_VERSION, namespace, m.PLURAL)
    return f"/apis/{m.API_VERSION}/{m.PLURAL}"


def list_jobs(namespace: str | None) -> Iterator[dict[str, Any]]:
    """FineTuneJobs of one namespace, or of all when ``None``, a page at a time."""
    return _pages(_jobs_path(namespace))


def job_list(namespace: str | None) -> dict[str, Any]:
    """The FineTuneJobList itself (``items`` and the ``resourceVersion`` to watch from)."""
    return request("GET", _jobs_path(namespace))


def watch_jobs(
    namespace: str | None, resource_version: str | None, timeout_seconds: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) watch events of the FineTuneJobs after ``resource_version``, until the
    apiserver ends the watch after ``timeout_seconds``; a version too old to watch from comes
    as an ``ERROR`` event whose object is the apiserver's Status (410)."""
    query = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
    if resource_version:
        query["resourceVersion"] = resource_version
    rest = b""
    for chunk in _stream(_jobs_path(namespace), query):
        *lines, rest = (rest + chunk).split(b"\n")
        for line in filter(bytes.strip, lines):
            try:
                event = json.loads(line)
                yield str(event["type"]), dict(event["object"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TransientError(f"watch {m.PLURAL}", None, f"unreadable event: {exc}") from exc


def patch_job(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) of the job's spec or metadata; the job as written."""
    return request(
        "PATCH",
        _ns_path(m.API_VERSION, namespace, m.PLURAL, name),
        patch,
        content_type="application/merge-patch+json",
    )


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


def get_pod(namespace: str, name: str) -> dict[str, Any]:
    return request("GET", _ns_path("v1", namespace, "pods", name))


def create_pod(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pod of one's own (not a job's child: no adoption, a 409 is an error)."""
    return request("POST", _ns_path("v1", namespace, "pods"), body)


def list_events(namespace: str, involved: str) -> list[dict[str, Any]]:
    """core/v1 Events about the object named ``involved`` (a job or a pod)."""
    obj = request(
        "GET",
        _ns_path("v1", namespace, "events"),
        query={"fieldSelector": f"involvedObject.name={involved}"},
    )
    items: list[dict[str, Any]] = obj.get("items") or []
    return items


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


# ------------------------------------------------------------------- logs, exec, the caller


def _log_query(container: str | None, tail: int | None) -> dict[str, str]:
    query = {"container": container} if container else {}
    if tail is not None:
        query["tailLines"] = str(tail)
    return query


def read_log(
    namespace: str, pod: str, container: str | None = None, tail: int | None = None
) -> str:
    """The container's log (``tail``: its last lines only)."""
    path = _ns_path("v1", namespace, "pods", pod) + "/log"
    data = _raw("GET", path, query=_log_query(container, tail), accept="*/*")
    return data.decode("utf-8", errors="replace")


def follow_log(namespace: str, pod: str, tail: int | None = None) -> Iterator[bytes]:
    """The log as it is written (``kubectl logs -f``), until the container ends."""
    path = _ns_path("v1", namespace, "pods", pod) + "/log"
    return _stream(path, {**_log_query(None, tail), "follow": "true"})


_HANDSHAKE = re.compile(r"Handshake status (\d{3})")


def exec_output(
    namespace: str, pod: str, container: str, command: list[str], timeout: float
) -> str:
    """stdout of ``command`` run in the pod's container (``kubectl exec``, over the client's
    websocket); ``CommandError`` when it exits non-zero, cannot start or runs past ``timeout``
    seconds."""
    import websocket
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream

    what = f"exec in pod {namespace}/{pod}"
    try:
        ws: Any = stream(
            client.CoreV1Api(api()).connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=command,
            stdin=False,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
    except ApiException as exc:  # the websocket's handshake: status 0, the HTTP one in words
        found = _HANDSHAKE.search(str(exc.reason))
        if found is None:
            raise TransientError(what, None, str(exc.reason)) from exc
        raise _error(what, int(found[1]), str(exc.reason)) from exc
    out: list[str] = []
    err: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while ws.is_open():
            if time.monotonic() > deadline:
                raise CommandError(what, None, f"ran past {timeout:.0f} s")
            ws.update(timeout=1)
            if ws.peek_stdout():
                out.append(ws.read_stdout())
            if ws.peek_stderr():
                err.append(ws.read_stderr())
        out.append(ws.read_stdout() if ws.peek_stdout() else "")
    except (websocket.WebSocketException, OSError) as exc:
        raise TransientError(what, None, str(exc)) from exc
    finally:
        ws.close()
    # the apiserver ends an exec with a Status on channel 3: Success, or Failure with the exit
    # code (or why the command could not start, e.g. no such executable)
    try:
        status = json.loads(ws.read_channel(3) or "{}")
    except ValueError:
        status = {}
    if isinstance(status, dict) and status.get("status") == "Failure":
        last = "".join(err).strip().splitlines()[-1:] or [str(status.get("message"))]
        raise CommandError(what, None, f"failed: {last[0]}")
    return "".join(out)


def may_i(namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    """``kubectl auth can-i``: a SelfSubjectAccessReview (every user may create one)."""
    attributes = {"namespace": namespace, "verb": verb, "resource": resource}
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {**attributes, "subresource": subresource}},
    }
    review = request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body)
    return bool((review.get("status") or {}).get("allowed"))


def list_namespaces() -> list[str]:
    items = request("GET", "/api/v1/namespaces").get("items") or []
    return [str(n["metadata"]["name"]) for n in items]


def server_version() -> str:
    return str(request("GET", "/version").get("gitVersion"))

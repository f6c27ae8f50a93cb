"""Cluster access for the plugin: kubeconfig, context and namespace as kubectl resolves them.

The only module of the plugin that imports the kubernetes client. Objects come back as plain
dicts with the API's camelCase keys (what ``kubectl get -o yaml`` shows).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator import models as m

_MERGE_PATCH = "application/merge-patch+json"


class CliError(Exception):
    """A failure to report in one line (``error: ...``) with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(CliError):
    """The named object does not exist."""


@dataclass(frozen=True)
class Target:
    """Where to talk to: kubectl's --kubeconfig, --context, -n/--namespace and -A."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    request_timeout: float = 30.0


def _kubeconfig_path(explicit: str | None) -> str | None:
    """What the client's loader reads: --kubeconfig, else all of $KUBECONFIG (``a:b`` is merged
    by the client's KubeConfigMerger, first file wins, as kubectl does), else ~/.kube/config;
    None (in-cluster config) when there is none of them."""
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG", "")
    if any(p for p in env.split(os.pathsep)):
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


class Api:
    """The FineTuneJobs, pods, events and logs of one cluster."""

    def __init__(self, target: Target) -> None:
        from kubernetes import client
        from kubernetes import config as _config

        config: Any = _config  # partly annotated upstream
        self.api_client: Any
        self.target = target
        path = _kubeconfig_path(target.kubeconfig)
        namespace = "default"
        try:
            if path is None:
                config.load_incluster_config()
                self.api_client = client.ApiClient()
                ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                if ns_file.is_file():
                    namespace = ns_file.read_text().strip() or namespace
            else:
                self.api_client = config.new_client_from_config(
                    config_file=path, context=target.context
                )
                contexts, active = config.list_kube_config_contexts(config_file=path)
                chosen = (
                    next((c for c in contexts if c.get("name") == target.context), active)
                    if target.context
                    else active
                )
                namespace = ((chosen or {}).get("context") or {}).get("namespace") or namespace
        except (config.ConfigException, OSError) as exc:
            raise CliError(f"cannot load the cluster configuration: {exc}") from exc
        self.namespace: str = target.namespace or namespace
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self._timeout = target.request_timeout

    # ------------------------------------------------------------------------------ helpers

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", self._timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise NotFoundError(f"{what} not found") from exc
            reason = exc.reason or ""
            try:
                import json

                reason = json.loads(exc.body or "{}").get("message") or reason
            except ValueError:
                pass
            raise CliError(f"{what}: {reason} (HTTP {exc.status})") from exc
        except (HTTPError, OSError) as exc:
            raise CliError(f"{what}: cannot reach the API server: {exc}") from exc

    def _plain(self, obj: Any) -> Any:
        return self.api_client.sanitize_for_serialization(obj)

    def _job_what(self, namespace: str, name: str) -> str:
        return f'finetunejobs.{m.GROUP} "{name}" in namespace "{namespace}"'

    # --------------------------------------------------------------------------------- jobs

    def list_jobs(self, namespace: str | None) -> dict[str, Any]:
        """The FineTuneJobList of ``namespace`` (None: all namespaces)."""
        if namespace is None:
            return dict(
                self._call(
                    "listing finetunejobs",
                    self.custom.list_cluster_custom_object,
                    m.GROUP,
                    m.VERSION,
                    m.PLURAL,
                )
            )
        return dict(
            self._call(
                f'listing finetunejobs in namespace "{namespace}"',
                self.custom.list_namespaced_custom_object,
                m.GROUP,
                m.VERSION,
                namespace,
                m.PLURAL,
            )
        )

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self._call(
                self._job_what(namespace, name),
                self.custom.get_namespaced_custom_object,
                m.GROUP,
                m.VERSION,
                namespace,
                m.PLURAL,
                name,
            )
        )

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of the job."""
        return dict(
            self._call(
                self._job_what(namespace, name),
                self.custom.patch_namespaced_custom_object,
                m.GROUP,
                m.VERSION,
                namespace,
                m.PLURAL,
                name,
                patch,
                _content_type=_MERGE_PATCH,
            )
        )

    def watch_jobs(
        self, namespace: str | None, resource_version: str | None, timeout_seconds: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) watch events of the jobs, from ``resource_version``."""
        from kubernetes import watch as _watch

        watch: Any = _watch
        fn: Any
        args: tuple[Any, ...]
        if namespace is None:
            fn = self.custom.list_cluster_custom_object
            args = (m.GROUP, m.VERSION, m.PLURAL)
        else:
            fn = self.custom.list_namespaced_custom_object
            args = (m.GROUP, m.VERSION, namespace, m.PLURAL)
        kwargs: dict[str, Any] = {"timeout_seconds": timeout_seconds}
        if resource_version:
            kwargs["resource_version"] = resource_version
        stream = watch.Watch().stream(fn, *args, **kwargs)
        for event in stream:
            yield str(event["type"]), dict(event["object"])

    # ------------------------------------------------------------------ pods, events, logs

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """Pods labelled ``finetune.dev/job=<job>``, oldest first."""
        found = self._call(
            f'listing pods of "{job}"',
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"{m.LABEL_JOB}={job}",
        )
        pods = [self._plain(p) for p in found.items]
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def list_events(self, namespace: str, names: list[str]) -> list[dict[str, Any]]:
        """core/v1 Events whose involved object has one of ``names``."""
        out: list[dict[str, Any]] = []
        for name in dict.fromkeys(names):
            found = self._call(
                f'listing events of "{name}"',
                self.core.list_namespaced_event,
                namespace,
                field_selector=f"involvedObject.name={name}",
            )
            out.extend(self._plain(e) for e in found.items)
        return out

    def read_log(
        self, namespace: str, pod: str, container: str | None = None, tail: int | None = None
    ) -> str:
        kwargs: dict[str, Any] = {}
        if container:
            kwargs["container"] = container
        if tail is not None:
            kwargs["tail_lines"] = tail
        return str(
            self._call(
                f'logs of pod "{pod}"', self.core.read_namespaced_pod_log, pod, namespace, **kwargs
            )
        )

    def stream_log(self, namespace: str, pod: str, tail: int | None = None) -> Iterator[bytes]:
        """Follow the pod's log (``kubectl logs -f``) until the container ends."""
        kwargs: dict[str, Any] = {"follow": True, "_preload_content": False}
        if tail is not None:
            kwargs["tail_lines"] = tail
        resp = self._call(
            f'logs of pod "{pod}"',
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            _request_timeout=None,
            **kwargs,
        )
        try:
            yield from resp.stream(4096)
        finally:
            resp.release_conn()

    def can_i(self, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
        """``kubectl auth can-i``: a SelfSubjectAccessReview (every user may create one)."""
        from kubernetes import client

        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "resource": resource,
                    "subresource": subresource,
                }
            },
        }
        review = self._call(
            f"may I {verb} {resource}{'/' + subresource if subresource else ''}",
            client.AuthorizationV1Api(self.api_client).create_self_subject_access_review,
            body,
        )
        return bool(review.status.allowed)

    def exec_output(
        self, namespace: str, pod: str, container: str, command: list[str], timeout: float
    ) -> str:
        """stdout of ``command`` run in the pod (``kubectl exec``); CliError if it exits non-zero
        or runs past ``timeout`` seconds."""
        import time

        from kubernetes.stream import stream

        ws = self._call(
            f'exec in pod "{pod}"',
            stream,
            self.core.connect_get_namespaced_pod_exec,
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
        out: list[str] = []
        err: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise CliError(f'exec in pod "{pod}" ran past {timeout:.0f} s')
                ws.update(timeout=1)
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            out.append(ws.read_stdout() if ws.peek_stdout() else "")
        finally:
            ws.close()
        # the API server ends an exec with a Status on channel 3: Success, or Failure with the
        # exit code (or why the command could not start, e.g. no such executable)
        import json

        try:
            status = json.loads(ws.read_channel(3) or "{}")
        except ValueError:
            status = {}
        if isinstance(status, dict) and status.get("status") == "Failure":
            last = "".join(err).strip().splitlines()[-1:] or [str(status.get("message"))]
            raise CliError(f'exec in pod "{pod}" failed: {last[0]}')
        return "".join(out)

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        self._call(f'creating pod "{name}"', self.core.create_namespaced_pod, namespace, body)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        found = self._call(f'pod "{name}"', self.core.read_namespaced_pod, name, namespace)
        return dict(self._plain(found))

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete at once (404: already gone)."""
        with contextlib.suppress(NotFoundError):
            self._call(
                f'deleting pod "{name}"',
                self.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=0,
            )

    def list_namespaces(self) -> list[str]:
        found = self._call("listing namespaces", self.core.list_namespace)
        return [str(n.metadata.name) for n in found.items]

    def server_version(self) -> str:
        from kubernetes import client

        info = self._call("server version", client.VersionApi(self.api_client).get_code)
        return str(info.git_version)

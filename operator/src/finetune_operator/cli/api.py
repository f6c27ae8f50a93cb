"""The plugin's cluster access: kube.py pointed at the cluster kubectl's flags name, its
exceptions turned into the plugin's one-line errors (``_errors``, the one place), and the
presentation the verbs share (the subject of each message, pods oldest first).

Objects come back as plain dicts with the API's camelCase keys (what ``kubectl get -o yaml``
shows).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from finetune_operator import models as m

# kube (and with it the kubernetes client, ~0.4 s) is imported where a call needs it: help,
# usage errors and completing verbs and flags stay quick


class CliError(Exception):
    """A failure to report in one line (``error: ...``) with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(CliError):
    """The named object does not exist."""


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """kube's exceptions as the plugin's messages, ``what`` naming the subject."""
    from finetune_operator import kube, kubeconfig

    try:
        yield
    except kubeconfig.ConfigError as exc:
        raise CliError(f"cannot load the cluster configuration: {exc}") from exc
    except kube.NotFoundError as exc:
        raise NotFoundError(f"{what} not found") from exc
    except kube.CommandError as exc:
        raise CliError(f"{what} {exc.detail}") from exc
    except kube.KubeError as exc:
        if exc.status is None:
            raise CliError(f"{what}: cannot reach the API server: {exc.detail}") from exc
        raise CliError(f"{what}: {exc.detail} (HTTP {exc.status})") from exc


@dataclass(frozen=True)
class Target:
    """Where to talk to: kubectl's --kubeconfig, --context, -n/--namespace and -A."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False
    request_timeout: float = 30.0


class Api:
    """The FineTuneJobs, pods, events and logs of one cluster (kube.py, pointed at it)."""

    def __init__(self, target: Target) -> None:
        from finetune_operator import kube, kubeconfig

        self.target = target
        with _errors("the cluster configuration"):
            api_client, namespace = kubeconfig.load(target.kubeconfig, target.context)
        kube.use(api_client, target.request_timeout)
        self.namespace: str = target.namespace or namespace

    @staticmethod
    def _job_what(namespace: str, name: str) -> str:
        return f'finetunejobs.{m.GROUP} "{name}" in namespace "{namespace}"'

    # --------------------------------------------------------------------------------- jobs

    def list_jobs(self, namespace: str | None) -> dict[str, Any]:
        """The FineTuneJobList of ``namespace`` (None: all namespaces)."""
        from finetune_operator import kube

        where = f' in namespace "{namespace}"' if namespace is not None else ""
        with _errors(f"listing finetunejobs{where}"):
            return kube.job_list(namespace)

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        from finetune_operator import kube

        with _errors(self._job_what(namespace, name)):
            return kube.get_job(namespace, name)

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (RFC 7386) of the job."""
        from finetune_operator import kube

        with _errors(self._job_what(namespace, name)):
            return kube.patch_job(namespace, name, patch)

    def watch_jobs(
        self, namespace: str | None, resource_version: str | None, timeout_seconds: int = 300
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) watch events of the jobs, from ``resource_version``."""
        from finetune_operator import kube

        with _errors("watching finetunejobs"):
            yield from kube.watch_jobs(namespace, resource_version, timeout_seconds)

    # ------------------------------------------------------------------ pods, events, logs

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """Pods labelled ``finetune.dev/job=<job>``, oldest first."""
        from finetune_operator import kube

        with _errors(f'listing pods of "{job}"'):
            pods = kube.list_pods(namespace, job)
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def list_events(self, namespace: str, names: list[str]) -> list[dict[str, Any]]:
        """core/v1 Events whose involved object has one of ``names``."""
        from finetune_operator import kube

        out: list[dict[str, Any]] = []
        for name in dict.fromkeys(names):
            with _errors(f'listing events of "{name}"'):
                out.extend(kube.list_events(namespace, name))
        return out

    def read_log(
        self, namespace: str, pod: str, container: str | None = None, tail: int | None = None
    ) -> str:
        from finetune_operator import kube

        with _errors(f'logs of pod "{pod}"'):
            return kube.read_log(namespace, pod, container, tail)

    def stream_log(self, namespace: str, pod: str, tail: int | None = None) -> Iterator[bytes]:
        """Follow the pod's log (``kubectl logs -f``) until the container ends."""
        from finetune_operator import kube

        with _errors(f'logs of pod "{pod}"'):
            yield from kube.follow_log(namespace, pod, tail)

    def can_i(self, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
        """``kubectl auth can-i``."""
        from finetune_operator import kube

        with _errors(f"may I {verb} {resource}{'/' + subresource if subresource else ''}"):
            return kube.may_i(namespace, verb, resource, subresource)

    def exec_output(
        self, namespace: str, pod: str, container: str, command: list[str], timeout: float
    ) -> str:
        """stdout of ``command`` run in the pod (``kubectl exec``); CliError if it exits non-zero
        or runs past ``timeout`` seconds."""
        from finetune_operator import kube

        with _errors(f'exec in pod "{pod}"'):
            return kube.exec_output(namespace, pod, container, command, timeout)

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        from finetune_operator import kube

        with _errors(f'creating pod "{body["metadata"]["name"]}"'):
            kube.create_pod(namespace, body)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        from finetune_operator import kube

        with _errors(f'pod "{name}"'):
            return kube.get_pod(namespace, name)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete at once (404: already gone)."""
        from finetune_operator import kube

        with _errors(f'deleting pod "{name}"'):
            kube.delete_pod(namespace, name, grace_seconds=0)

    def list_namespaces(self) -> list[str]:
        from finetune_operator import kube

        with _errors("listing namespaces"):
            return kube.list_namespaces()

    def server_version(self) -> str:
        from finetune_operator import kube

        with _errors("server version"):
            return kube.server_version()

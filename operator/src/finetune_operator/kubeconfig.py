"""Which cluster the kubectl plugin talks to: kubectl's own choice of kubeconfig files, context
and namespace, loaded with the kubernetes client's loader (the API calls themselves are
``kube``'s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config


class ConfigError(Exception):
    """No usable cluster configuration: an unreadable kubeconfig, an unknown context…"""


_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _kubeconfig_path(explicit: str | None) -> str | None:
    """What kubectl reads: ``explicit`` (--kubeconfig), else all of $KUBECONFIG (``a:b``,
    merged by the client's KubeConfigMerger after ``_as_kubectl_merges``), else
    ~/.kube/config; None (in-cluster config) when there is none of them."""
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG", "")
    if any(p for p in env.split(os.pathsep)):
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


def _as_kubectl_merges(path: str) -> tuple[str, str | None]:
    """The files of ``path`` (``a:b``) for the client's loader, and the current context, as
    kubectl merges them where the client differs: an empty file is an empty config (the client
    refuses it), and the first file to set current-context wins (in the client the last)."""
    kept: list[str] = []
    current: str | None = None
    for part in path.split(os.pathsep):
        file = Path(part).expanduser()
        if not part or not file.is_file():
            continue  # the client skips missing files too
        doc = yaml.safe_load(file.read_text())
        if not doc:
            continue
        kept.append(part)
        if isinstance(doc, dict) and current is None:
            current = doc.get("current-context") or None
    return (os.pathsep.join(kept) or path), current


def load(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """A client for the cluster kubectl would talk to with --kubeconfig ``kubeconfig`` and
    --context ``context`` (the client's own loader), and the namespace that context names
    ("default" when none); ``ConfigError`` when that cannot be loaded."""
    conf: Any = config  # partly annotated upstream
    path = _kubeconfig_path(kubeconfig)
    namespace = "default"
    try:
        if path is None:
            conf.load_incluster_config()
            if _SA_NAMESPACE.is_file():
                namespace = _SA_NAMESPACE.read_text().strip() or namespace
            return client.ApiClient(), namespace
        path, current = _as_kubectl_merges(path)
        context = context or current
        api_client = conf.new_client_from_config(config_file=path, context=context)
        contexts, active = conf.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(exc)) from exc
    chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
    return api_client, ((chosen or {}).get("context") or {}).get("namespace") or namespace

"""kube.list_names against the real apiserver: the resync's metadata-only LISTs of the jobs'
children (core and RBAC kinds, one namespace or all) carry names only, by label."""

from __future__ import annotations

import pytest

from finetune_operator import kube
from tests.harness import Cluster

pytestmark = pytest.mark.integration

LABELS = "app.kubernetes.io/managed-by=finetune-operator,finetune.dev/job"


def _apply(cluster: Cluster, namespace: str, manifest: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def test_metadata_only_lists_of_labelled_children(cluster: Cluster, namespace: str) -> None:
    ours = "labels: {app.kubernetes.io/managed-by: finetune-operator, finetune.dev/job: bot}"
    _apply(cluster, namespace, f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: bot-config, {ours}}}
data: {{config.json: '{{"secret-ish": "x"}}'}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: unlabelled, labels: {{finetune.dev/job: bot}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: bot-trainer, {ours}}}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bot-trainer, {ours}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: bot-trainer}}
subjects: [{{kind: ServiceAccount, name: default, namespace: {namespace}}}]
""")  # fmt: skip
    assert kube.list_names("ConfigMap", namespace, LABELS) == {(namespace, "bot-config")}
    assert kube.list_names("Role", namespace, LABELS) == {(namespace, "bot-trainer")}
    assert kube.list_names("RoleBinding", namespace, LABELS) == {(namespace, "bot-trainer")}
    assert kube.list_names("ServiceAccount", namespace, LABELS) == set()
    everywhere = kube.list_names("RoleBinding", None, LABELS)  # all namespaces
    assert (namespace, "bot-trainer") in everywhere
    # what travels: metadata only, not the ConfigMap's data
    raw = kube.request(
        "GET", f"/api/v1/namespaces/{namespace}/configmaps",
        query={"labelSelector": LABELS}, accept=kube._METADATA_ONLY,
    )  # fmt: skip
    assert raw["kind"] == "PartialObjectMetadataList"
    assert all("data" not in item for item in raw["items"]) and raw["items"]


def test_a_list_in_a_missing_namespace_is_empty_and_a_bad_selector_is_refused(
    cluster: Cluster,
) -> None:
    assert kube.list_names("ConfigMap", "no-such-namespace-fto", LABELS) == set()
    with pytest.raises(kube.RejectedError):
        kube.list_names("ConfigMap", None, "a b c")

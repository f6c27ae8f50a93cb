"""The operator's RBAC is exactly what its code uses, proven from the apiserver's audit log.

hack/cluster-up.sh runs kube-apiserver with an audit policy that logs (Metadata level) every
request of one identity, ``system:serviceaccount:fto-audit:finetune-operator``. This test binds
that ServiceAccount to the generated rules the chart installs (``crd.OPERATOR_RULES`` by a
RoleBinding in the watched namespace, the cluster-scoped ones by a ClusterRoleBinding), runs the
real operator with its token through a job's lifecycle (prepare, training on a GPU, suspend,
resume, success, TTL deletion), then reads the (verb, resource) pairs it used from the log: none
may be denied, and every granted pair must be used or named in ``NOT_EXERCISED`` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import crd, gitops
from finetune_operator import models as m
from tests.harness import Cluster, wait_until
from tests.integration import test_operator as ops
from tests.integration.test_operator import Operator, data_config_map, job, wait_phase

pytestmark = [pytest.mark.integration, pytest.mark.security]
# test_operator's fixtures, under names of this module: the CRD installed, the stand-in image loaded
crd_installed, standin_loaded = ops.crd, ops.standin

STATE = Path("/run/fto-cluster")
POLICY = STATE / "audit-policy.yaml"
AUDIT_DIR = STATE / "audit"
RBAC = "rbac.authorization.k8s.io"

Pair = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted but not used by this lifecycle, each with why it is granted anyway.
NOT_EXERCISED: dict[Pair, str] = {
    (m.GROUP, f"{m.PLURAL}/finalizers", "update"): "never called: the apiserver asks for it when "
    "the operator creates a child whose ownerReference sets blockOwnerDeletion",
    ("", "pods", "get"): "read only when a pod's name is already taken (409), to check who owns "
    "it (an operator restart between creating a pod and recording it: "
    "test_operator_restart_mid_job_makes_no_duplicate_pod)",
    ("", "serviceaccounts", "get"): "read only when the name is already taken (409): each "
    "child is created once per job per operator process and then followed by its watch",
    ("", "persistentvolumeclaims", "get"): "as serviceaccounts get: only after a 409",
    ("rbac.authorization.k8s.io", "roles", "get"): "as serviceaccounts get: only after a 409",
    ("rbac.authorization.k8s.io", "rolebindings", "get"): "as serviceaccounts get: only after a "
    "409",
    ("kueue.x-k8s.io", "workloads", "get"): "only a job with spec.queueName reads its Kueue "
    "Workload's admission message (tests/e2e/test_kueue.py); this job is not queued",
    ("", "services", "create"): "only a multi-node job (spec.resources.nodes > 1) has its "
    "headless Service <job>-nodes; this lifecycle is one node (tests/e2e/test_multinode.py)",
    ("", "services", "get"): "read only when the Service's name is already taken (409)",
    ("", "configmaps", "update"): "the trainer's Role grants get/patch/update on its progress "
    "ConfigMap, and RBAC lets the operator grant only what it holds (escalation check)",
}


def _audit_user() -> str:
    policy = yaml.safe_load(POLICY.read_text())
    users: list[str] = policy["rules"][0]["users"]
    return users[0]


def _granted(rules: list[dict[str, Any]]) -> set[Pair]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _events(user: str, since: datetime) -> list[dict[str, Any]]:
    """The audit events of ``user`` received at or after ``since`` (rotated files included)."""
    out = []
    for path in sorted(AUDIT_DIR.glob("audit*.log")):
        for line in path.read_text(errors="replace").splitlines():
            ev = json.loads(line)
            stamp = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if ev.get("user", {}).get("username") == user and stamp >= since:
                out.append(ev)
    return out


def _pair(ev: dict[str, Any]) -> Pair | None:
    ref = ev.get("objectRef")
    if not ref or "resource" not in ref:
        return None  # discovery (/api, /apis, /version): every authenticated user may
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, ev["verb"])


def _kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig that authenticates as ``namespace/account`` with a fresh token."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=3600s")
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "u", "user": {"token": token.strip()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(kc))
    return str(path)


@pytest.fixture
def audited_operator(
    cluster: Cluster, crd_installed: None, standin_loaded: str, namespace: str, tmp_path: Path
) -> Iterator[tuple[Operator, str, datetime]]:
    """The operator as the audited ServiceAccount, bound to exactly the generated rules."""
    if not POLICY.is_file():
        pytest.skip("the audit log is written only by the local cluster (hack/cluster-up.sh)")
    user = _audit_user()
    _, _, sa_ns, account = user.split(":")
    ns_role = f"fto-it-audit-{namespace}"
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": sa_ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": account, "namespace": sa_ns}},
        {**crd.build_cluster_role(), "metadata": {"name": ns_role}},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
         "metadata": {"name": "audited-operator", "namespace": namespace},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": ns_role},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": sa_ns}]},
        {**gitops.cluster_scoped_role(), "metadata": {"name": "fto-it-audit-cluster"}},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "fto-it-audit-cluster"},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "fto-it-audit-cluster"},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": sa_ns}]},
    ]  # fmt: skip
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cluster.kubectl("apply", "-f", "-", input=body)
    as_sa = dataclasses.replace(
        cluster, kubeconfig=_kubeconfig(cluster, sa_ns, account, tmp_path / "sa.kubeconfig")
    )
    op = Operator(as_sa, namespace, tmp_path / "operator.log")
    since = datetime.now(UTC).replace(microsecond=0)
    op.start()
    yield op, user, since
    op.stop()
    print(f"--- operator log (tail) ---\n{op.tail()}")
    cluster.kubectl("delete", "clusterrole", ns_role, "--wait=false")


def test_the_operator_uses_every_granted_verb_and_nothing_more(
    cluster: Cluster, namespace: str, audited_operator: tuple[Operator, str, datetime]
) -> None:
    op, user, since = audited_operator
    data_config_map(cluster, namespace)
    # a GPU job without gpuMemoryMiB: the operator reads the nodes' GPU memory labels
    # and an output claim of a size: the operator creates it
    job(cluster, namespace, steps=24, pace=0.3, resources={"gpus": 1},
        output={"size": "1Gi"}, ttlSecondsAfterFinished=1)  # fmt: skip
    wait_phase(cluster, namespace, "Running",
               extra=lambda s: (s.get("progress") or {}).get("step", 0) >= 3)  # fmt: skip
    cluster.kubectl("patch", "ftj", "bot", "-n", namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":true}}')  # fmt: skip
    wait_phase(cluster, namespace, "Suspended", timeout=60)
    cluster.kubectl("patch", "ftj", "bot", "-n", namespace, "--type", "merge",
                    "-p", '{"spec":{"suspend":false}}')  # fmt: skip
    wait_phase(cluster, namespace, "Succeeded", timeout=120)
    wait_until(lambda: not cluster.kubectl("get", "ftj", "-n", namespace, "-o", "name").strip(),
               timeout=60, message="the TTL to delete the finished job")  # fmt: skip
    op.stop()  # watches end and the Lease is released: their audit events are written

    events = _events(user, since)
    assert events, f"no audit event of {user} since {since} in {AUDIT_DIR}"
    used: dict[Pair, int] = {}
    denied: list[str] = []
    for ev in events:
        pair = _pair(ev)
        if pair is None:
            continue
        used[pair] = used.get(pair, 0) + 1
        if (ev.get("responseStatus") or {}).get("code") == 403:
            ref = ev["objectRef"]
            denied.append(
                f"{ev['verb']} {pair[1]} {ref.get('namespace', '')}/{ref.get('name', '')}"
            )
    granted = _granted(crd.OPERATOR_RULES)
    for pair in sorted(granted | set(used)):  # the table of the closing note (pytest -s)
        print(f"| {pair[0] or 'core'} | {pair[1]} | {pair[2]} | {used.get(pair, 0)} | "
              f"{NOT_EXERCISED.get(pair, '')} |")  # fmt: skip
    assert not denied, f"refused to the operator: {denied}"
    assert set(used) <= granted, f"used but not granted: {sorted(set(used) - granted)}"
    assert set(NOT_EXERCISED) <= granted, sorted(set(NOT_EXERCISED) - granted)
    unused = granted - set(used) - set(NOT_EXERCISED)
    assert not unused, f"granted but never used (drop it from crd.OPERATOR_RULES): {sorted(unused)}"

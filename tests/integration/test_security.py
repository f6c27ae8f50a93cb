"""A FineTuneJob grants nothing its author lacks, on the real apiserver.

The generated ValidatingAdmissionPolicy (policy.py) is bound in two namespaces: ``strict`` with
the chart's default allowlists (plus busybox) and ``loose`` where the admin widened every list.
``alice`` may only touch finetunejobs; ``bob`` also may create pods and read Secrets,
ConfigMaps and claims there. Every escalation attempt of ``ATTEMPTS`` is sent (server-side
dry-run, impersonated with ``--as``) as alice in ``strict`` (refused with its message), as bob in
``loose`` (accepted unless no right can grant it) and as alice in ``loose`` (a right she lacks is
still refused). The operator itself (its reconcile, in-process with the admin's credentials)
refuses name takeovers (NameConflict) and jobs beyond its allowlists (NotAllowed). Every pod the
builders render passes Pod Security ``restricted`` with no warning.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import policy, security
from finetune_operator.settings import Settings
from tests.harness import REPO_ROOT, Cluster, wait_until
from tests.harness.cluster import _kubectl_path

pytestmark = [pytest.mark.integration, pytest.mark.security]

CRD = REPO_ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
ALICE, BOB = "alice@example.test", "bob@example.test"
BASE: dict[str, Any] = {
    "model": {"name": "org/model"},
    "dataset": {"url": "https://198.18.0.10/train.jsonl"},
    "training": {"maxSteps": 2, "batchSize": 4},
    "resources": {"gpus": 0},
    "output": {"size": "1Gi"},
}
TPL = "podTemplate"


@dataclass(frozen=True)
class Attempt:
    """One escalation attempt: the spec fields it adds, the message fragment alice gets in the
    strict namespace, and whether bob (with the rights) is accepted in the loose one."""

    what: str
    spec: dict[str, Any]
    refused: str
    bob_accepted: bool = True
    right: bool = True  # refused for lack of a right (alice is refused in ``loose`` too)


A = ALICE
SECRET_VOL = {"name": "s", "secret": {"secretName": "db"}}
PROJECTED = {"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}
ENV_SECRET = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}
APPARMOR = "container.apparmor.security.beta.kubernetes.io/trainer"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
ATTEMPTS: list[Attempt] = [
    Attempt("custom image", {"image": "busybox:1.36"}, f"spec.image: {A} may not create pods"),
    Attempt("image outside the allowlist", {"image": "evil.example/miner:1"},
            "evil.example/miner:1 is not in the allowed images"),
    Attempt("another ServiceAccount", {TPL: {"serviceAccountName": "priv-sa"}},
            f"spec.podTemplate.serviceAccountName: {A} may not create pods"),
    Attempt("hub token Secret", {"hubTokenSecretRef": {"name": "other-team-token"}},
            f"spec.hubTokenSecretRef: {A} may not get secrets"),
    Attempt("MLflow credentials Secret",
            {"tracking": {"mlflow": {"trackingUri": "https://mlflow.example.com",
                                     "credentialsSecretRef": {"name": "other-team-mlflow"}}}},
            f"spec.tracking.mlflow.credentialsSecretRef: {A} may not get secrets"),
    Attempt("W&B API key Secret",
            {"tracking": {"wandb": {"project": "p", "mode": "online",
                                    "apiKeySecretRef": {"name": "other-team-wandb"}}}},
            f"spec.tracking.wandb.apiKeySecretRef: {A} may not get secrets"),
    Attempt("chat template from a ConfigMap",
            {"dataset": {"url": "https://example.com/t.jsonl", "format": "messages",
                         "chatTemplate": {"configMap": {"name": "other-template"}}}},
            f"spec.dataset.chatTemplate.configMap: {A} may not get configmaps"),
    Attempt("env from a Secret", {TPL: {"env": [ENV_SECRET]}},
            f"env (valueFrom.secretKeyRef): {A} may not get secrets"),
    Attempt("Secret volume", {TPL: {"volumes": [SECRET_VOL]}},
            f"volumes (secret): {A} may not get secrets"),
    Attempt("projected Secret volume", {TPL: {"volumes": [PROJECTED]}},
            f"volumes (projected secret): {A} may not get secrets"),
    Attempt("dataset from a ConfigMap", {"dataset": {"configMap": {"name": "other-data"}}},
            f"spec.dataset.configMap: {A} may not get configmaps"),
    Attempt("ConfigMap volume", {TPL: {"volumes": [{"name": "c", "configMap": {"name": "x"}}]}},
            f"volumes (configMap): {A} may not get configmaps"),
    Attempt("another team's claim as output", {"output": {"pvc": "payments-data"}},
            f"{A} may not get persistentvolumeclaims"),
    # the demo's shape: three claim references (one expression over all of them had run out of
    # CEL cost: "actual cost limit exceeded" for every author, rights or not)
    Attempt("model, data and output on claims",
            {"model": {"pvc": "payments-data", "path": "m"},
             "dataset": {"pvc": "payments-data", "path": "d.jsonl"},
             "output": {"pvc": "other-out"}},
            f"{A} may not get persistentvolumeclaims"),
    Attempt("hostPath /", {TPL: {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
            "volume root has a type outside the allowed volume types", right=False),
    Attempt("reserved label", {TPL: {"labels": {"finetune.dev/job": "victim"}}},
            "finetune.dev/job uses a reserved prefix", bob_accepted=False, right=False),
    Attempt("AppArmor unconfined", {TPL: {"annotations": {APPARMOR: "unconfined"}}},
            "uses a reserved prefix", bob_accepted=False, right=False),
    Attempt("tolerate every taint", {TPL: {"tolerations": [{"operator": "Exists"}]}},
            "tolerations: key (any) is not in the allowed toleration keys", right=False),
    Attempt("system priority", {TPL: {"priorityClassName": "system-node-critical"}},
            "system-node-critical is not in the allowed priority classes", right=False),
    Attempt("node selector on a reserved pool", {TPL: {"nodeSelector": {"pool": "payments"}}},
            "nodeSelector: node label pool is not in the allowed node labels", right=False),
    Attempt("node affinity to one named node",
            {TPL: {"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]}]}}}}},
            "spec.podTemplate.affinity: only nodeAffinity on the allowed node labels", right=False),
    Attempt("pod affinity next to another team's pods",
            {TPL: {"affinity": {"podAffinity": {REQUIRED: [{"topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app": "payments"}}}]}}}},
            "spec.podTemplate.affinity: only nodeAffinity", right=False),
    Attempt("the shared model cache mounted again, writable",
            {TPL: {"volumeMounts": [{"name": "shared-cache", "mountPath": "/w"}]}},
            "volumeMounts: shared-cache is not a volume of spec.podTemplate.volumes",
            bob_accepted=False, right=False),
    Attempt("trustRemoteCode", {"model": {"name": "org/model", "trustRemoteCode": True}},
            "spec.model.trustRemoteCode: running the model's own Python code", right=False),
    Attempt("configMap key escaping",
            {"dataset": {"configMap": {"name": "d", "key": "../../etc/passwd"}}},
            "dataset.configMap.key must match", bob_accepted=False, right=False),
    Attempt("hub token key absolute",
            {"hubTokenSecretRef": {"name": "hf", "key": "/var/run/secrets/x"}},
            "hubTokenSecretRef.key must match", bob_accepted=False, right=False),
    Attempt("model name escaping", {"model": {"name": "../../../etc"}},
            "model.name must match", bob_accepted=False, right=False),
]  # fmt: skip


def kubectl(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_kubectl_path(), *args], input=input, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def apply(cluster: Cluster, *docs: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})
    cluster.kubectl("apply", "-f", "-", input=body)


def job(namespace: str, spec: dict[str, Any], name: str = "esc") -> dict[str, Any]:
    return {
        "apiVersion": m.API_VERSION,
        "kind": m.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**BASE, **spec},
    }


def dry_run(
    cluster: Cluster, as_user: str, body: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl("--kubeconfig", cluster.kubeconfig, "create", "--dry-run=server",
                   "--as", as_user, "-f", "-", input=json.dumps(body))  # fmt: skip


def _why(stderr: str) -> str:
    """The refusal without kubectl's and the apiserver's preamble."""
    return stderr.strip().split("denied request: ", 1)[-1].split("Invalid value: ", 1)[-1]


def _rbac(ns: str, user: str, rights: bool) -> list[dict[str, Any]]:
    rb = "rbac.authorization.k8s.io"
    ftj = {"apiGroups": [m.GROUP], "resources": [m.PLURAL], "verbs": ["*"]}
    author = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
              {"apiGroups": [""], "resources": ["secrets", "configmaps", "persistentvolumeclaims"],
               "verbs": ["get"]}]  # fmt: skip
    docs: list[dict[str, Any]] = [
        {"apiVersion": f"{rb}/v1", "kind": "Role", "metadata": {"name": n, "namespace": ns},
         "rules": r}
        for n, r in (("ftj", [ftj]), ("pod-author", author))
    ]  # fmt: skip
    for kind, name in [("Role", "ftj"), *([("Role", "pod-author")] if rights else [])]:
        docs.append({
            "apiVersion": f"{rb}/v1", "kind": "RoleBinding",
            "metadata": {"name": f"{user.split('@', 1)[0]}-{name}", "namespace": ns},
            "roleRef": {"apiGroup": rb, "kind": kind, "name": name},
            "subjects": [{"kind": "User", "name": user, "apiGroup": rb}],
        })  # fmt: skip
    return docs


@pytest.fixture(scope="module")
def guarded(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """(strict, loose): two namespaces under the policy, with alice and bob's rights."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev")
    tag = uuid.uuid4().hex[:6]
    strict, loose = f"t-sec-strict-{tag}", f"t-sec-loose-{tag}"
    trainer = Settings.model_construct().trainer_image
    lists = {
        "strict": security.Allowlists(images=(trainer, "busybox*")),
        "loose": security.Allowlists(
            images=("*",), volume_types=("*",), priority_classes=("*",), toleration_keys=("*",),
            node_label_keys=("*",), trust_remote_code=True,
        ),
    }  # fmt: skip
    docs: list[dict[str, Any]] = []
    bindings: list[str] = []
    for (kind, allow), ns in zip(lists.items(), (strict, loose), strict=True):
        name = f"fto-it-security-{kind}.finetune.dev"  # one per kind, kept between runs
        binding = policy.build_binding([ns], name=name)
        binding["metadata"]["name"] = f"{name}-{tag}"
        bindings.append(f"validatingadmissionpolicybinding/{name}-{tag}")
        docs += [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            policy.build_policy(allow, name),
            binding,
            *_rbac(ns, ALICE, rights=False),
            *_rbac(ns, BOB, rights=True),
        ]
    apply(cluster, *docs)
    # the policy and bindings reach the apiserver's admission informers asynchronously
    for ns in (strict, loose):
        probe = job(ns, {"image": "busybox:1.36"})
        wait_until(lambda p=probe: "may not create pods" in dry_run(cluster, ALICE, p).stderr,
                   timeout=30, interval=0.3,
                   message=f"the admission policy to be in force in {ns}")  # fmt: skip
    yield strict, loose
    cluster.kubectl("delete", *bindings, "--wait=false")
    cluster.kubectl("delete", "namespace", strict, loose, "--wait=false")


def test_baseline_job_is_accepted_for_a_finetunejobs_only_user(
    cluster: Cluster, guarded: tuple[str, str]
) -> None:
    strict, _ = guarded
    ok = job(strict, {TPL: {"labels": {"kueue.x-k8s.io/queue-name": "q", "team": "a"}}})
    proc = dry_run(cluster, ALICE, ok)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.what for a in ATTEMPTS])
def test_escalation_refused_without_the_right_accepted_with_it(
    cluster: Cluster, guarded: tuple[str, str], attempt: Attempt
) -> None:
    strict, loose = guarded
    alice = dry_run(cluster, ALICE, job(strict, attempt.spec))
    assert alice.returncode != 0, f"{attempt.what}: accepted for alice"
    assert attempt.refused in alice.stderr, alice.stderr
    bob = dry_run(cluster, BOB, job(loose, attempt.spec))
    assert (bob.returncode == 0) == attempt.bob_accepted, bob.stderr
    alice_loose = dry_run(cluster, ALICE, job(loose, attempt.spec))
    assert (alice_loose.returncode != 0) == (attempt.right or not attempt.bob_accepted), (
        alice_loose.stderr
    )
    # a row of the closing note's table (pytest -s shows it)
    print(f"| {attempt.what} | {_why(alice.stderr)} | {_why(bob.stderr) or 'accepted'} |")


def test_a_colleague_may_suspend_a_job_that_uses_rights_he_lacks(
    cluster: Cluster, guarded: tuple[str, str]
) -> None:
    """Checks apply to the fields a request changes: suspend needs no Secret rights (and the
    operator's own finalizer/annotation patches pass the same way)."""
    _, loose = guarded
    body = job(loose, {"hubTokenSecretRef": {"name": "hf"}, "image": "busybox:1.36"}, name="bobs")
    proc = kubectl("--kubeconfig", cluster.kubeconfig, "create", "--as", BOB, "-f", "-",
                   input=json.dumps(body))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    patch = json.dumps({"spec": {"suspend": True}})
    proc = kubectl("--kubeconfig", cluster.kubeconfig, "patch", "ftj", "bobs", "-n", loose,
                   "--as", ALICE, "--type=merge", "-p", patch)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    swap = json.dumps({"spec": {"hubTokenSecretRef": {"name": "other"}}})
    proc = kubectl("--kubeconfig", cluster.kubeconfig, "patch", "ftj", "bobs", "-n", loose,
                   "--as", ALICE, "--type=merge", "-p", swap)  # fmt: skip
    assert proc.returncode != 0 and "may not get secrets" in proc.stderr


# --------------------------------------------------------------------- the operator's own checks


@pytest.fixture
def handlers(cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The operator's handlers module acting as a ServiceAccount that holds exactly the
    generated operator rules (crd.OPERATOR_RULES) in ``namespace``: every call the reconcile
    makes here must be granted by them."""
    from kubernetes import config

    from finetune_operator import crd, kube
    from finetune_operator import handlers as h

    rb = "rbac.authorization.k8s.io"
    role = f"fto-it-operator-{namespace}"
    apply(
        cluster,
        {"apiVersion": f"{rb}/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": crd.OPERATOR_RULES},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "operator", "namespace": namespace}},
        {"apiVersion": f"{rb}/v1", "kind": "RoleBinding",
         "metadata": {"name": "operator", "namespace": namespace},
         "roleRef": {"apiGroup": rb, "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]},
    )  # fmt: skip
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:operator")
    monkeypatch.setattr(kube, "_api", api)
    yield h
    cluster.kubectl("delete", "clusterrole", role, "--wait=false")


def _status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = json.loads(cluster.kubectl("get", "ftj", name, "-n", ns, "-o", "json"))
    st: dict[str, Any] = out.get("status") or {}
    return st


@pytest.mark.parametrize(
    ("kind", "taken"),
    [
        ("ConfigMap", "app-config"),
        ("ConfigMap", "app-progress"),
        ("Role", "app-trainer"),
        ("RoleBinding", "app-trainer"),
        ("ServiceAccount", "app-trainer"),
    ],
)
def test_a_name_taken_by_an_unowned_object_fails_the_job_and_touches_nothing(
    cluster: Cluster, namespace: str, handlers: Any, kind: str, taken: str
) -> None:
    pods_rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]}
    bodies: dict[str, dict[str, Any]] = {
        "ConfigMap": {"apiVersion": "v1", "data": {"config.json": "{}"}},
        "ServiceAccount": {"apiVersion": "v1"},
        "Role": {"apiVersion": "rbac.authorization.k8s.io/v1", "rules": [pods_rule]},
        "RoleBinding": {  # binds someone else's account to a Role of the same name
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": taken},
            "subjects": [{"kind": "ServiceAccount", "name": "other", "namespace": namespace}],
        },
    }
    existing = bodies[kind]
    obj = {**existing, "kind": kind, "metadata": {"name": taken, "namespace": namespace}}
    apply(cluster, obj)
    before = json.loads(cluster.kubectl("get", kind, taken, "-n", namespace, "-o", "json"))
    apply(cluster, job(namespace, {}, name="app"))
    handlers.reconcile(namespace, "app")
    st = _status(cluster, namespace, "app")
    assert st["phase"] == "Failed" and st["reason"] == m.Reason.NAME_CONFLICT, st
    assert f'"{taken}" already exists and does not belong to this job' in st["message"]
    after = json.loads(cluster.kubectl("get", kind, taken, "-n", namespace, "-o", "json"))
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]
    assert cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").strip() == ""
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    assert m.Reason.NAME_CONFLICT in events


def test_a_job_beyond_the_allowlists_fails_not_allowed_without_a_pod(
    cluster: Cluster, namespace: str, handlers: Any
) -> None:
    """A job that never met the policy (no binding in this namespace) is stopped by the
    operator before any child exists."""
    spec = {TPL: {"volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                  "tolerations": [{"operator": "Exists"}]}}  # fmt: skip
    apply(cluster, job(namespace, spec, name="sneaky"))
    handlers.reconcile(namespace, "sneaky")
    st = _status(cluster, namespace, "sneaky")
    assert st["phase"] == "Failed" and st["reason"] == m.Reason.NOT_ALLOWED, st
    assert "volume type hostPath is not allowed" in st["message"]
    assert "tolerations" in st["message"]
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    assert m.Reason.NOT_ALLOWED in events
    assert cluster.kubectl("get", "pods,roles,cm", "-n", namespace, "-o", "name").strip() in (
        "",
        "configmap/kube-root-ca.crt",
    )


# ----------------------------------------------------------------- Pod Security: restricted


def test_every_rendered_pod_passes_pod_security_restricted(
    cluster: Cluster, namespace: str
) -> None:
    for mode in ("enforce", "warn", "audit"):
        cluster.kubectl("label", "namespace", namespace, "--overwrite",
                        f"pod-security.kubernetes.io/{mode}=restricted")  # fmt: skip
    settings = Settings.model_construct()
    extras = {"env": [{"name": "A", "value": "1"}],
              "volumes": [{"name": "scratch", "emptyDir": {}}],
              "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
              "nodeSelector": {"gpu": "3060"}, "labels": {"team": "a"},
              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}  # fmt: skip
    body = job(namespace, {"hubTokenSecretRef": {"name": "hf"}, "cache": {"pvc": "cache"}})
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    plain = m.parse_job(body)
    rich = m.parse_job({**body, "spec": {**body["spec"], TPL: extras}})
    account = b.service_account(plain)
    account["metadata"].pop("ownerReferences")  # a missing owner would have it collected
    apply(cluster, account)
    pods = {
        "prepare": b.prepare_pod(plain, settings),
        "train 1 GPU": b.train_pod(plain.model_copy(update={"spec": plain.spec.model_copy(
            update={"resources": m.Resources(gpus=1)})}), 1, settings),
        "train 2 GPUs": b.train_pod(plain.model_copy(update={"spec": plain.spec.model_copy(
            update={"resources": m.Resources(gpus=2)})}), 2, settings),
        "podTemplate extras": b.train_pod(rich, 3, settings),
    }  # fmt: skip
    for what, pod in pods.items():
        pod["metadata"].pop("ownerReferences")  # the owner is not stored (dry-run)
        proc = kubectl("--kubeconfig", cluster.kubeconfig, "create", "--dry-run=server", "-f",
                       "-", input=json.dumps(pod))  # fmt: skip
        assert proc.returncode == 0, f"{what}: {proc.stderr}"
        assert "Warning" not in proc.stderr, f"{what}: {proc.stderr}"


def test_the_operator_needs_no_more_than_its_generated_rules(
    cluster: Cluster, namespace: str, handlers: Any
) -> None:
    """A job's first reconcile as the operator's ServiceAccount (bound to the generated rules
    only) makes every child and the prepare pod: nothing it does is refused."""
    apply(cluster, job(namespace, {}, name="fine"))
    handlers.reconcile(namespace, "fine")
    st = _status(cluster, namespace, "fine")
    assert st["phase"] == m.Phase.PREPARING, st
    names = set(cluster.kubectl("get", "pods,sa,roles,rolebindings,cm,pvc", "-n", namespace,
                                "-o", "name").split())  # fmt: skip
    expected = {"pod/fine-prepare", "serviceaccount/fine-trainer", "role.rbac.authorization.k8s.io/"
                "fine-trainer", "rolebinding.rbac.authorization.k8s.io/fine-trainer",
                "configmap/fine-config", "configmap/fine-progress",
                "persistentvolumeclaim/fine-output"}  # fmt: skip
    assert expected <= names, expected - names
    handlers.reconcile(namespace, "fine")  # a second pass adopts what it made
    assert _status(cluster, namespace, "fine")["phase"] == m.Phase.PREPARING

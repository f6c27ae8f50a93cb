"""The Helm chart, rendered by the pinned Helm built from the Go module proxy, and the kustomize
install that must hold the same objects.

Skipped (with the reason) only when the helm binary cannot be built (no Go toolchain, or the
module proxy is unreachable).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import crd, gitops, policy, security
from finetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts/finetune-operator"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Render = Callable[..., list[dict[str, Any]]]


def _cache_bin(tool_dir: str) -> Path:
    out = subprocess.run(
        ["bash", "-c", f"source {ROOT}/hack/versions.sh && echo $FTO_CACHE"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()) / "bin" / tool_dir


@pytest.fixture(scope="session")
def helm() -> Path:
    version = subprocess.run(
        ["bash", "-c", f"source {ROOT}/hack/versions.sh && echo $HELM_VERSION"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    binary = _cache_bin(f"helm-v{version}") / "helm"
    if not binary.is_file():
        if shutil.which("go") is None:
            pytest.skip("helm is not built and go is not installed to build it")
        proc = subprocess.run(
            [str(ROOT / "hack/build-tools.sh"), "helm"],
            check=False,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0 or not binary.is_file():
            pytest.skip(f"could not build helm v{version}: {proc.stderr[-2000:]}")
    return binary


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    def _render(*args: str, release: str = "finetune-operator") -> list[dict[str, Any]]:
        proc = subprocess.run(
            [str(helm), "template", release, str(CHART), "-n", "finetune-system", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return _render


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_lint_is_clean(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART)], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


def test_default_objects(render: Render) -> None:
    kinds = sorted(d["kind"] for d in render())
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "RoleBinding",
         "Service", "Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    )  # fmt: skip


def test_admission_policy_is_the_generated_one_with_the_values_as_variables(
    render: Render,
) -> None:
    docs = render()
    defaults = security.allowlists(Settings.model_construct())
    assert (
        _one(docs, "ValidatingAdmissionPolicy")["spec"] == (policy.build_policy(defaults)["spec"])
    )
    binding = _one(docs, "ValidatingAdmissionPolicyBinding")["spec"]
    assert binding["policyName"] == "finetune-operator.finetune.dev"
    selector = binding["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["finetune-system"]}
    ]
    loose = render(
        "--set", "operator.clusterWide=true", "--set", "policy.allowedImages={reg/a/*}",
        "--set", "policy.allowTrustRemoteCode=true", "--set", "policy.allowedTolerationKeys={*}",
    )  # fmt: skip
    assert "matchResources" not in _one(loose, "ValidatingAdmissionPolicyBinding")["spec"]
    variables = {
        v["name"]: v["expression"]
        for v in _one(loose, "ValidatingAdmissionPolicy")["spec"]["variables"]
    }
    assert variables["allowedImages"] == '["localhost/finetune-trainer:dev","reg/a/*"]'
    assert variables["allowTrustRemoteCode"] == "true"
    assert variables["allowedTolerationKeys"] == '["*"]'
    env = env_of(_one(loose, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["FTO_ALLOWED_IMAGES"] == "reg/a/*" and env["FTO_ALLOW_TRUST_REMOTE_CODE"] == "true"
    assert env["FTO_NAMESPACES"] == ""
    off = render("--set", "policy.admission=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmission")]


def test_deployment_runs_one_locked_down_replica(render: Render) -> None:
    dep = _one(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert "args" not in container  # ports come from FTO_HEALTH_PORT / FTO_METRICS_PORT
    assert env_of(container)["FTO_HEALTH_PORT"] == "8080"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FTO_METRICS_PORT"] == "9090"
    assert env["FTO_NAMESPACES"] == "finetune-system"  # the release namespace only by default
    assert env["FTO_TRAINER_IMAGE"] == "localhost/finetune-trainer:dev"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_two_replicas_roll_one_at_a_time_and_share_the_lease_duration(render: Render) -> None:
    dep = _one(
        render("--set", "replicaCount=2", "--set", "operator.leaseDurationSeconds=6"), "Deployment"
    )
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["FTO_LEASE_DURATION_SECONDS"] == "6"
    assert Settings(lease_duration_seconds=6).leader_election  # the replicas elect a leader


def test_settings_env_names_exist() -> None:
    """Every FTO_* variable the chart sets is a field of the operator's Settings."""
    from finetune_operator.settings import Settings

    fields = {f"FTO_{name.upper()}" for name in Settings.model_fields}
    text = (CHART / "templates/deployment.yaml").read_text()
    used = {word.strip(":") for word in text.split() if word.startswith("FTO_")}
    assert used and used <= fields, used - fields


def test_rbac_rules_are_the_generated_ones(render: Render) -> None:
    default = render()
    assert _one(default, "ClusterRole", "finetune-operator")["rules"] == crd.OPERATOR_RULES
    (binding,) = [d for d in default if d["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == "finetune-system"  # not cluster-wide by default
    docs = render("--set", "operator.clusterWide=true")
    role = _one(docs, "ClusterRole")
    assert role["rules"] == crd.OPERATOR_RULES
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "finetune-operator", "namespace": "finetune-system"}
    ]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule


def test_watched_namespaces_get_rolebindings(render: Render) -> None:
    docs = render("--set", "operator.watchNamespaces={ml,research}")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    assert not [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "finetune-operator"
    ]
    cluster = _one(docs, "ClusterRole", "finetune-operator-cluster")
    assert cluster["rules"] == gitops.operator_cluster_rules()
    env = {
        e["name"]: e.get("value")
        for e in _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FTO_NAMESPACES"] == "ml,research"


def test_created_namespaces_enforce_pod_security_restricted(render: Render) -> None:
    assert not [d for d in render() if d["kind"] == "Namespace"]
    ns = "operator.watchNamespaces={ml,finetune-system}"
    made = [d for d in render("--set", ns, "--set", "namespaces.create=true")
            if d["kind"] == "Namespace"]  # fmt: skip
    assert [d["metadata"]["name"] for d in made] == ["ml"]  # the release namespace is helm's
    assert made[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    off = render("--set", ns, "--set", "namespaces.create=true",
                 "--set", "namespaces.podSecurityRestricted=false")  # fmt: skip
    labels = _one(off, "Namespace", "ml")["metadata"]["labels"]
    assert "pod-security.kubernetes.io/enforce" not in labels


def test_service_monitor_and_extra_env(render: Render) -> None:
    docs = render(
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "extraEnv[0].name=FTO_RESYNC_SECONDS",
        "--set-string",
        "extraEnv[0].value=10",
        "--set",
        "nodeSelector.role=system",
        "--set",
        "tolerations[0].operator=Exists",
    )
    sm = _one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # the series carry namespace/job_name labels of their own: Prometheus must keep them
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    svc = _one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "FTO_RESYNC_SECONDS", "value": "10"} in pod["containers"][0]["env"]
    assert pod["nodeSelector"] == {"role": "system"}
    assert pod["tolerations"] == [{"operator": "Exists"}]


def test_metrics_off(render: Render) -> None:
    docs = render("--set", "metrics.enabled=false")
    assert not [d for d in docs if d["kind"] in ("Service", "ServiceMonitor")]
    env = {
        e["name"]: e.get("value")
        for e in _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FTO_METRICS_PORT"] == "0"


def test_chart_never_renders_argocds_own_configmap(render: Render) -> None:
    """argocd-cm belongs to Argo CD's installer: the keys ship as a patch and as argo-cd values."""
    assert not [d for d in render() if d["kind"] == "ConfigMap"]
    patch = yaml.safe_load((ROOT / "manifests/argocd/argocd-cm-patch.yaml").read_text())
    values = yaml.safe_load((ROOT / "manifests/argocd/argo-cd-helm-values.yaml").read_text())
    assert patch["data"] == values["configs"]["cm"] == gitops.argocd_cm_data(ROOT)


def test_helm_show_readme_is_the_generated_values_table(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "show", "readme", str(CHART)], check=True, capture_output=True, text=True
    )
    assert proc.stdout.strip() == (CHART / "README.md").read_text().strip()
    assert "| `operator.trainerImage` | string |" in proc.stdout
    assert "kubectl apply --server-side --force-conflicts" in proc.stdout


def test_resource_quantities_accepted(render: Render) -> None:
    dep = _one(
        render("--set", "resources.limits.memory=1.5Gi", "--set", "resources.requests.cpu=0.5"),
        "Deployment",
    )
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == "1.5Gi"


@pytest.mark.parametrize(
    "args",
    [
        ("--set", "bogus=1"),
        ("--set", "image.bogus=1"),
        ("--set", "metrics.port=70000"),
        ("--set", "image.pullPolicy=Sometimes"),
        ("--set", "operator.watchNamespaces={Not_A_Namespace}"),
        ("--set", "resources.limits.memory=lots"),
        ("--set", "resources.requests.cpu=1 core"),
        ("--set", "resources.bogus.cpu=1"),
        ("--set", "argocd.resourceCustomizations.enabled=true"),
        ("--set", "replicaCount=0"),
        ("--set", "operator.leaseDurationSeconds=1"),
    ],
    ids=lambda a: a[1],
)
def test_schema_rejects(helm: Path, args: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [str(helm), "template", "x", str(CHART), *args], check=False, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr or (
        "schema" in proc.stderr
    ), proc.stderr


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or line.startswith(" " * 4 + "-"):
            continue
        key, _, rest = stripped.partition(":")
        if rest.strip() == "" and not key.startswith("-"):
            continue  # a section header; its members carry the docs
        if key.startswith("-") or key in ("requests", "limits", "cpu", "memory", "type"):
            continue  # contents of a documented default
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and "# --" not in lines[j]:
            j -= 1
        parent_doc = any("# --" in lines[k] for k in range(max(0, i - 12), i))
        assert j >= 0 and ("# --" in lines[j] or parent_doc), f"values.yaml:{i + 1} {stripped}"


def test_chart_crd_and_generated_files_are_current() -> None:
    assert gitops.write(ROOT, check=True) == [], "run `make generate`"
    chart_crd = yaml.safe_load((CHART / "crds/finetune.dev_finetunejobs.yaml").read_text())
    assert chart_crd == crd.build_crd()


# ----------------------------------------------------------------------- kustomize install


def _kubectl() -> list[str] | None:
    version = subprocess.run(
        ["bash", "-c", f"source {ROOT}/hack/versions.sh && echo $K8S_VERSION"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    built = _cache_bin(f"k8s-v{version}") / "kubectl"
    if built.is_file():
        return [str(built)]
    found = shutil.which("kubectl")
    return [found] if found else None


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels", None)
    template = doc.get("spec", {}).get("template", {}).get("metadata", {})
    for key in HELM_ONLY_LABELS:
        template.get("labels", {}).pop(key, None)
    return doc


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return (doc["kind"], doc["metadata"]["name"])


def test_kustomize_install_matches_chart_defaults(render: Render) -> None:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("no kubectl (hack/build-tools.sh k8s) to run kustomize")
    proc = subprocess.run(
        [*kubectl, "kustomize", str(ROOT / "manifests/install")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    installed = [d for d in yaml.safe_load_all(proc.stdout) if d]
    namespace = _one(installed, "Namespace")
    assert namespace["metadata"]["name"] == "finetune-system"
    ours = {key(d): _strip(d) for d in installed if d["kind"] != "Namespace"}
    chart = {key(d): _strip(d) for d in render("--include-crds")}
    assert sorted(ours) == sorted(chart)
    for k, doc in chart.items():
        assert ours[k] == doc, k
    dep = _one(installed, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()

"""`helm upgrade` of the installed chart, the way docs/install.md section 5 says: the CRD step
first (a CRD of the previous chart version lacking a field is brought up to date), then the
chart with changed values; a job training meanwhile keeps its pod and finishes in one attempt."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from tests.e2e.conftest import RELEASE, SYSTEM_NS, helm_path
from tests.e2e.test_lifecycle import apply_job, get, pods, status, step, wait_phase
from tests.harness import REPO_ROOT, Cluster, wait_until

pytestmark = pytest.mark.e2e

CRD = "finetunejobs.finetune.dev"
DEPLOYMENT = f"{RELEASE}-finetune-operator"
NEW_FIELD = "completedGeneration"  # added to status after the chart's first version


def documented_upgrade() -> list[list[str]]:
    """The commands of docs/install.md's "Upgrade" section, split into argv lists."""
    text = (REPO_ROOT / "docs" / "install.md").read_text()
    section = text.split("## 5. Upgrade", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "docs/install.md section 5 has no sh block"
    return [shlex.split(line) for line in block.group(1).replace("\\\n", " ").splitlines() if line]


def helm(cluster: Cluster, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig}
    proc = subprocess.run([helm_path(), *args], env=env, capture_output=True, text=True,
                          timeout=400, check=False)  # fmt: skip
    assert proc.returncode == 0, f"helm {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def upgrade(cluster: Cluster, value: str) -> None:
    """``helm upgrade`` of the e2e release with one changed value; the install's others kept.
    ``--set-json``: ``--set`` turns 0.5 into the string "0.5", which the schema refuses."""
    chart = str(REPO_ROOT / "charts" / "finetune-operator")
    helm(cluster, "upgrade", RELEASE, chart, "-n", SYSTEM_NS, "--reuse-values",
         "--set-json", value, "--wait", "--timeout", "5m")  # fmt: skip


def operator_env(cluster: Cluster, name: str) -> str | None:
    dep = get(cluster, SYSTEM_NS, "deployment", DEPLOYMENT)
    env = dep["spec"]["template"]["spec"]["containers"][0].get("env", [])
    return next((e.get("value") for e in env if e["name"] == name), None)


def status_fields(cluster: Cluster) -> set[str]:
    crd = json.loads(cluster.kubectl("get", "crd", CRD, "-o", "json"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["status"]["properties"])


@pytest.mark.e2e_ns("upgrade")
def test_helm_upgrade_with_the_crd_step_leaves_a_training_job_alone(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    kubectl_step, helm_step = documented_upgrade()
    assert kubectl_step[:2] == ["kubectl", "apply"] and helm_step[:2] == ["helm", "upgrade"]
    apply_job(cluster, ns, "bot", steps=300, every=50)  # outlasts the upgrade
    before = wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= 2, timeout=300)
    trainer_uid = get(cluster, ns, "pod", "bot-1")["metadata"]["uid"]
    interval = operator_env(cluster, "FTO_PROGRESS_INTERVAL_SECONDS")
    assert interval is not None

    # the CRD as the previous chart version had it: without a status field added since
    assert NEW_FIELD in status_fields(cluster)
    where = "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties"
    patch = [{"op": "remove", "path": f"{where}/{NEW_FIELD}"}]
    cluster.kubectl("patch", "crd", CRD, "--type=json", "-p", json.dumps(patch))
    assert NEW_FIELD not in status_fields(cluster)

    # 1. the documented CRD step, as written (paths relative to the repository)
    args = [a.replace("./charts/", f"{REPO_ROOT}/charts/") for a in kubectl_step[1:]]
    cluster.kubectl(*args)
    assert NEW_FIELD in status_fields(cluster)

    # 2. helm upgrade with a changed value (--reuse-values keeps the install's others)
    changed = "1" if interval != "1" else "2"
    try:
        upgrade(cluster, f"operator.progressIntervalSeconds={changed}")
        assert operator_env(cluster, "FTO_PROGRESS_INTERVAL_SECONDS") == changed
        cluster.kubectl("rollout", "status", f"deployment/{DEPLOYMENT}", "-n", SYSTEM_NS,
                        "--timeout=180s")  # fmt: skip

        # 3. the job trained on: the same pod, status advancing under the new operator, one attempt
        wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) > step(before) + 2,
                   timeout=300)  # fmt: skip
        assert get(cluster, ns, "pod", "bot-1")["metadata"]["uid"] == trainer_uid
        done = wait_phase(cluster, ns, "bot", "Succeeded", timeout=600)
        assert [a["reason"] for a in done["attempts"]] == ["Completed"]
        assert pods(cluster, ns) == ["bot-1", "bot-prepare"]
        assert done["startTime"] == before["startTime"]
        assert done.get(NEW_FIELD) == 1  # the field the CRD step brought back is served
    finally:  # the other tests' install, as it was
        upgrade(cluster, f"operator.progressIntervalSeconds={interval}")
    wait_until(lambda: status(cluster, ns, "bot").get("phase") == "Succeeded", timeout=30,
               message="the job to stay Succeeded after the rollback")  # fmt: skip

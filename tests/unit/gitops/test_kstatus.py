"""The FineTuneJob status as GitOps tools read it, one fixture per phase.

* kstatus (Flux, kpt, cli-utils appliers): the real library through ``tools/kstatus`` (built by
  ``hack/build-tools.sh kstatus``) and the Python port in ``finetune_operator.kstatus`` must agree
  with the table below and with each other, message included.
* Flux ``healthCheckExprs``: the CEL snippet documented in ``docs/gitops.md`` is extracted from the
  doc and evaluated with ``cel-python`` the way kustomize-controller does (observedGeneration
  first, then inProgress, failed, current; no match or an error = still in progress).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import kstatus
from finetune_operator import lifecycle as op_status
from finetune_operator import models as m

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests/fixtures/status"

# fixture -> (kstatus, Flux healthCheckExprs result)
EXPECTED: dict[str, tuple[str, str]] = {
    "Pending": ("InProgress", "InProgress"),
    "Preparing": ("InProgress", "InProgress"),
    "Queued": ("Current", "InProgress"),
    "Starting": ("InProgress", "InProgress"),
    "Running": ("Current", "InProgress"),
    "Suspending": ("InProgress", "InProgress"),
    "Suspended": ("Current", "InProgress"),
    "Exporting": ("Current", "InProgress"),  # Ready; Flux waits for Succeeded (the exports)
    "Succeeded": ("Current", "Current"),
    "Failed": ("Failed", "Failed"),
    "generation-lag": ("InProgress", "InProgress"),
    # kstatus calls an object without conditions Current: the operator writes status at once
    "no-status": ("Current", "InProgress"),
    "terminating": ("Terminating", "InProgress"),
}


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_python_port(name: str) -> None:
    assert kstatus.compute(_load(name)).status == EXPECTED[name][0]


def _source_key() -> str:
    """The cache key hack/build-tools.sh gives the binary: sha256 of its sources, 12 hex digits."""
    src = ROOT / "tools" / "kstatus"
    data = b"".join((src / name).read_bytes() for name in ("go.mod", "go.sum", "main.go"))
    return hashlib.sha256(data).hexdigest()[:12]


@pytest.fixture(scope="session")
def kstatus_check() -> Path:
    if shutil.which("go") is None:
        pytest.skip("go is not installed: cannot build tools/kstatus")
    env = {**os.environ}
    versions = subprocess.run(
        ["bash", "-c", f"source {ROOT}/hack/versions.sh && echo $FTO_CACHE $CLI_UTILS_VERSION"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    proc = subprocess.run(
        [str(ROOT / "hack/build-tools.sh"), "kstatus"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"could not build kstatus-check: {proc.stderr[-2000:]}")
    key = _source_key()
    binary = Path(versions[0]) / "bin" / f"kstatus-check-{versions[1]}-{key}" / "kstatus-check"
    assert binary.is_file(), proc.stderr
    return binary


def test_go_library_agrees_on_every_fixture(kstatus_check: Path) -> None:
    names = sorted(EXPECTED)
    proc = subprocess.run(
        [str(kstatus_check), *(str(FIXTURES / f"{n}.yaml") for n in names)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(names)
    for name, got in zip(names, results, strict=True):
        port = kstatus.compute(_load(name))
        assert (got["status"], got["message"]) == (port.status, port.message), name
        assert got["status"] == EXPECTED[name][0], name


def test_go_reads_a_list_from_stdin(kstatus_check: Path) -> None:
    items = [_load("Running"), _load("Failed")]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    proc = subprocess.run(
        [str(kstatus_check)], input=doc, capture_output=True, text=True, check=True
    )
    assert [json.loads(line)["status"] for line in proc.stdout.splitlines()] == [
        "Current",
        "Failed",
    ]


# ------------------------------------------------------------------------------- Flux CEL


def _documented_health_check() -> dict[str, Any]:
    doc = (ROOT / "docs/gitops.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S):
        if "healthCheckExprs" in block:
            spec = yaml.safe_load(block)["spec"]
            checks = spec["healthCheckExprs"]
            assert len(checks) == 1
            check: dict[str, Any] = checks[0]
            return check
    raise AssertionError("docs/gitops.md has no healthCheckExprs example")


def _flux_status(check: dict[str, Any], obj: dict[str, Any]) -> str:
    """kustomize-controller's evaluation of a custom health check (fluxcd/pkg runtime/cel)."""
    import celpy
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError

    generation = obj.get("metadata", {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if observed is not None and observed != generation:
        return "InProgress"
    env = celpy.Environment()
    activation = {key: json_to_cel(value) for key, value in obj.items()}
    for key, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        expr = check.get(key)
        if not expr:
            continue
        try:
            result = env.program(env.compile(expr)).evaluate(activation)
        except Exception:  # an error leaves the resource in progress
            return "InProgress"
        if isinstance(result, CELEvalError):
            return "InProgress"
        if bool(result):
            return status
    return "InProgress"


def test_documented_cel_snippet_targets_finetunejobs() -> None:
    check = _documented_health_check()
    assert (check["apiVersion"], check["kind"]) == ("finetune.dev/v1alpha1", "FineTuneJob")
    assert set(check) <= {"apiVersion", "kind", "current", "failed", "inProgress"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flux_health_check_exprs(name: str) -> None:
    assert _flux_status(_documented_health_check(), _load(name)) == EXPECTED[name][1]


@pytest.mark.parametrize("phase", sorted(m.Phase.ALL))
def test_fixture_conditions_follow_the_operator_table(phase: str) -> None:
    """The fixtures carry exactly the conditions ``status.conditions_for`` writes per phase."""
    obj = _load(phase)
    assert obj["status"]["phase"] == phase
    got = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    types = ("Ready", "Reconciling", "Stalled", "Progressing", "Suspended", "Succeeded", "Failed")
    assert got == dict(zip(types, op_status.CONDITION_TABLE[phase], strict=True))
    generation = obj["metadata"]["generation"]
    assert all(c["observedGeneration"] == generation for c in obj["status"]["conditions"])


# ------------------------------------------------------------------- captured from e2e runs

CAPTURED = FIXTURES / "captured"
CAPTURED_EXPECTED = {
    "Queued": "Current",
    "Running": "Current",
    "Suspended": "Current",
    "Succeeded": "Current",
    "Failed": "Failed",
}


def _captured() -> list[Path]:
    return sorted(CAPTURED.glob("*.yaml"))


def test_captured_objects_cover_the_long_lived_phases() -> None:
    phases = {yaml.safe_load(p.read_text())["status"]["phase"] for p in _captured()}
    assert phases == set(CAPTURED_EXPECTED)


@pytest.mark.parametrize("path", _captured(), ids=lambda p: p.stem)
def test_captured_objects_read_right_to_the_python_port(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert kstatus.compute(obj).status == CAPTURED_EXPECTED[obj["status"]["phase"]]


def test_go_library_agrees_on_captured_objects(kstatus_check: Path) -> None:
    paths = _captured()
    proc = subprocess.run(
        [str(kstatus_check), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for path, line in zip(paths, proc.stdout.splitlines(), strict=True):
        got, obj = json.loads(line), yaml.safe_load(path.read_text())
        port = kstatus.compute(obj)
        assert (got["status"], got["message"]) == (port.status, port.message), path.name
        assert got["status"] == CAPTURED_EXPECTED[obj["status"]["phase"]], path.name

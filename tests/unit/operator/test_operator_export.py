"""spec.output.export: the CPU export pod, the trainer's export config, the Exporting phase
(its report from the pod's termination message; ExportFailed with a sentence), and CEL/pydantic
limits on plain HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle import export
from finetune_operator.settings import Settings
from finetune_trainer.config import parse_config
from tests.unit.operator.conftest import NOW, build_job, derive, pod

P = m.Phase
SETTINGS = Settings(api_server="https://198.18.128.1:443")
OCI = {
    "repository": "ghcr.io/acme/bot-adapter",
    "tag": "v1",
    "credentialsSecretRef": {"name": "ghcr-push"},
}
SPEC = {"output": {"pvc": "out", "export": {"gguf": {"quantization": "q8_0"}, "oci": OCI}}}
PLAN = {"plan": {"microBatchSize": 4, "gradientAccumulation": 2}}
REPORT = {
    "version": 1,
    "results": [
        {"kind": "merged", "ok": True, "location": "merged", "size_bytes": 9},
        {"kind": "gguf", "ok": True, "location": "gguf/bot-Q8_0.gguf",
         "digest": "sha256:ab", "size_bytes": 5},
        {"kind": "oci", "ok": False, "error": "registry ghcr.io could not be reached: refused"},
    ],
}  # fmt: skip


def _export_pod(**kw: Any) -> dict[str, Any]:
    return pod("bot-export", role="export", attempt=0, **kw)


def test_export_pod_is_cpu_only_and_mounts_only_its_secret() -> None:
    job = build_job(spec=SPEC)
    built = b.export_pod(job, SETTINGS)
    assert built["metadata"]["name"] == "bot-export"
    assert built["metadata"]["labels"]["finetune.dev/role"] == "export"
    container = built["spec"]["containers"][0]
    assert container["command"] == ["finetune-trainer", "export", "--config", b.CONFIG_PATH]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert "priorityClassName" not in built["spec"]
    assert {"name": "registry", "secret": {"secretName": "ghcr-push", "optional": True}} in built[
        "spec"
    ]["volumes"]
    assert {"name": "registry", "mountPath": b.REGISTRY_DIR, "readOnly": True} in container[
        "volumeMounts"
    ]
    # the training pod never sees the push credentials
    train = b.train_pod(job, 1, SETTINGS)
    assert all(v["name"] != "registry" for v in train["spec"]["volumes"])


def test_export_config_is_valid_for_the_trainer() -> None:
    job = build_job(spec=SPEC)
    rendered = b.trainer_config(job, 1, None, None, SETTINGS)
    parsed = parse_config(rendered)
    ex = parsed.output.export
    assert ex is not None and ex.gguf is not None and ex.oci is not None
    assert ex.gguf.quantization == "q8_0"
    assert ex.oci.reference == "ghcr.io/acme/bot-adapter:v1"
    assert ex.oci.credentials_file == f"{b.REGISTRY_DIR}/.dockerconfigjson"
    assert parsed.model_dump(mode="json") == rendered


def test_plain_http_only_for_test_registries() -> None:
    local = {"repository": "198.18.0.1:5000/a/b", "plainHttp": True}
    assert m.OciExport.model_validate(local).plain_http
    job = build_job(spec={"output": {"pvc": "out", "export": {"oci": local}}})
    assert parse_config(b.trainer_config(job, 1, None, None, SETTINGS)).output.export
    remote = {"output": {"pvc": "out", "export": {"oci": {**local, "repository": "10.0.0.1/a"}}}}
    job = build_job(spec=remote)
    with pytest.raises(Exception, match="plainHttp is only allowed"):
        parse_config(b.trainer_config(job, 1, None, None, SETTINGS))
    with pytest.raises(ValidationError):
        m.OciExport.model_validate({"repository": "Not A Repo"})


def _exporting(pods: list[dict[str, Any]], spec: dict[str, Any] = SPEC) -> m.FineTuneJobStatus:
    output = {"claim": "out", "path": "bot/output", "latest": "bot/latest", "ready": True}
    job = build_job(
        spec=spec, status={"phase": "Exporting", "attempt": 1, "output": output, **PLAN}
    )
    return derive(job, pods, None, None, NOW)


def test_training_success_with_export_moves_to_exporting() -> None:
    job = build_job(spec=SPEC, status={"phase": "Running", "attempt": 1, **PLAN})
    trained = pod("bot-1", phase="Succeeded", exit_code=0)
    new = derive(job, [trained], None, None, NOW)
    assert (new.phase, new.reason) == (P.EXPORTING, "Exporting")
    assert new.message == (
        "training finished; exporting merged, gguf q8_0, oci ghcr.io/acme/bot-adapter:v1"
    )
    assert new.completion_time is None
    ready = {c.type: c.status for c in new.conditions}
    assert ready["Ready"] == "True" and ready["Succeeded"] == "False"


def test_without_export_training_success_is_succeeded() -> None:
    job = build_job(status={"phase": "Running", "attempt": 1, **PLAN})
    new = derive(job, [pod("bot-1", phase="Succeeded", exit_code=0)], None, None, NOW)
    assert new.phase == P.SUCCEEDED


def test_export_pod_success_reads_the_report() -> None:
    ok = {"version": 1, "results": REPORT["results"][:2]}
    done = _export_pod(phase="Succeeded", exit_code=0, term_message=json.dumps(ok))
    new = _exporting([done])
    assert (new.phase, new.reason) == (P.SUCCEEDED, m.Reason.COMPLETED)
    assert new.message == (
        "training finished; exported merged bot/output/merged, gguf bot/output/gguf/bot-Q8_0.gguf"
    )
    assert new.output is not None  # the pod's paths, relative to its output/, made claim paths
    assert (new.output.merged, new.output.gguf) == (
        "bot/output/merged",
        "bot/output/gguf/bot-Q8_0.gguf",
    )
    assert new.completion_time is not None
    results = export.outcomes(done)
    assert results is not None and [r.kind for r in results] == ["merged", "gguf"]
    assert results[1].digest == "sha256:ab" and results[1].size_bytes == 5


def test_export_failure_is_export_failed_with_a_sentence() -> None:
    failed = _export_pod(phase="Failed", exit_code=9, term_message=json.dumps(REPORT))
    new = _exporting([failed])
    assert (new.phase, new.reason) == (P.FAILED, m.Reason.EXPORT_FAILED)
    assert new.message == (
        "export failed (oci: registry ghcr.io could not be reached: refused). "
        "The trained adapter is kept."
    )
    cond = {c.type: c for c in new.conditions}
    assert cond["Failed"].status == "True" and cond["Failed"].reason == "ExportFailed"


def test_export_crash_without_report_uses_the_pod_message() -> None:
    crashed = _export_pod(
        phase="Failed", exit_code=2, term_message="BadConfig: no trained adapter at /w"
    )
    new = _exporting([crashed])
    assert new.reason == m.Reason.EXPORT_FAILED
    assert new.message is not None and "no trained adapter at /w" in new.message
    assert new.message.endswith("The trained adapter is kept.")


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        ([], "training finished; exporting merged, gguf q8_0, oci ghcr.io/acme/bot-adapter:v1"),
        (
            [_export_pod(phase="Running", running=True)],
            "exporting merged, gguf q8_0, oci ghcr.io/acme/bot-adapter:v1 in bot-export",
        ),
    ],
)
def test_exporting_waits_for_the_pod(pods: list[dict[str, Any]], message: str) -> None:
    new = _exporting(pods)
    assert (new.phase, new.message) == (P.EXPORTING, message)


def test_suspend_while_exporting_does_not_stop_the_export() -> None:
    spec = {**SPEC, "suspend": True}
    new = _exporting([_export_pod(phase="Running", running=True)], spec)
    assert new.phase == P.EXPORTING


@pytest.mark.parametrize("text", [None, "", "not json", '{"results": [{"kind": "x"}]}', "{"])
def test_unreadable_reports_are_none(text: str | None) -> None:
    assert export.outcomes(_export_pod(phase="Failed", exit_code=1, term_message=text)) is None


@pytest.mark.parametrize(
    ("repository", "rejected"),
    [
        ("127.0.0.1:5000/ml/bot", False),
        ("198.19.3.4/ml/bot", False),
        ("10.0.0.1:5000/ml/bot", True),
        ("192.168.1.2/ml/bot", True),
        ("127.0.0.1.evil.example/ml/bot", True),
        ("registry.local:5000/ml/bot", True),
    ],
)
def test_cel_refuses_plain_http_beyond_test_registries(repository: str, rejected: bool) -> None:
    from tests.unit.operator.test_operator_crd import cel_errors

    oci = {"repository": repository, "plainHttp": True}
    spec = {"model": {"name": "org/m"}, "dataset": {"hub": "org/d"}}
    spec["output"] = {"pvc": "out", "export": {"oci": oci}}
    message = "output.export.oci.plainHttp is only allowed for 127.0.0.1 or 198.18.0.0/15"
    assert (message in cel_errors(spec)) is rejected


def test_status_output_lists_what_the_export_pod_wrote_and_pushed() -> None:
    from finetune_operator.lifecycle import output as out

    where = m.OutputStatus(claim="c", path="bot/runs/1/output", latest="bot/latest", ready=True)
    outcomes = [
        m.ExportOutcome(kind="merged", ok=True, location="merged", size_bytes=10),
        m.ExportOutcome(kind="gguf", ok=False, error="the converter failed"),
        m.ExportOutcome(kind="oci", ok=True, location="127.0.0.1:5000/a:v1", digest="sha256:ab"),
    ]
    got = out.with_exports(where, outcomes)
    assert got is not None and got.merged == "bot/runs/1/output/merged" and got.gguf is None
    assert [(e.kind, e.location, e.digest) for e in got.exports] == [
        ("merged", "bot/runs/1/output/merged", None),
        ("oci", "127.0.0.1:5000/a:v1", "sha256:ab"),
    ]
    assert out.with_exports(where, []) is where and out.with_exports(None, outcomes) is None


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("gguf/bot-Q8_0.gguf", "bot/output/gguf/bot-Q8_0.gguf"),
        ("merged", "bot/output/merged"),
        ("../../other/secret", None),  # the pod's report is untrusted: no way out of output/
        ("/workspace/output/merged", None),
        ("gguf//x", None),
        ("./merged", None),
        (None, None),
    ],
)
def test_export_paths_stay_inside_the_output_directory(
    location: str | None, expected: str | None
) -> None:
    from finetune_operator.lifecycle import output as out

    where = m.OutputStatus(claim="c", path="bot/output", latest="bot/latest", ready=True)
    outcome = m.ExportOutcome(kind="gguf", ok=True, location=location)
    assert out.export_location(where, outcome) == expected
    assert out.export_location(None, outcome) is None

"""The adapter pushed as an OCI artifact to a real registry (Debian's docker-registry, installed
by hack/setup-host.sh, started here on 127.0.0.1 with htpasswd auth), pulled back with ORAS and
compared by digest and bytes; credentials only from a dockerconfigjson file."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer.export import gguf, oci
from finetune_trainer.export.run import run_exports
from finetune_trainer.export.spec import ExportSpec, OciSpec, plain_http_allowed
from tests.harness.registry import dockerconfigjson, pull, running_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a docker-registry (distribution) with Basic auth, plain HTTP on loopback."""
    with running_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


@pytest.fixture
def credentials(registry: str, tmp_path: Path) -> Path:
    """What a kubernetes.io/dockerconfigjson Secret's .dockerconfigjson key holds."""
    path = tmp_path / "dockerconfigjson"
    path.write_text(dockerconfigjson(registry))
    return path


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """Adapter-shaped files (the push does not read their content)."""
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (d / "adapter_model.safetensors").write_bytes(hashlib.sha256(b"w").digest() * 4096)
    (d / "tokenizer.json").write_text("{}")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    return d


def test_push_pull_back_same_digest_and_bytes(
    registry: str, credentials: Path, adapter: Path, tmp_path: Path
) -> None:
    spec = OciSpec(
        repository=f"{registry}/ml/support-bot-adapter",
        tag="v1",
        credentials_file=str(credentials),
        plain_http=True,
    )
    report = run_exports(
        ExportSpec(oci=spec),
        adapter=adapter,
        out=tmp_path,
        base="tiny-llama",
        job="support-bot",
        hub_kwargs={},
        tools=gguf.Tools(tmp_path / "unused"),
    )
    assert report.ok, report
    (result,) = report.results
    assert result.kind == "oci" and result.location == f"{registry}/ml/support-bot-adapter:v1"
    assert result.digest is not None and result.digest.startswith("sha256:")
    names, digest = pull(registry, spec.reference, credentials, tmp_path / "pulled")
    assert digest == result.digest
    assert names == sorted(p.name for p in adapter.iterdir())
    for name in names:
        assert (tmp_path / "pulled" / name).read_bytes() == (adapter / name).read_bytes()


def test_push_without_credentials_is_a_sentence(registry: str, adapter: Path) -> None:
    spec = OciSpec(repository=f"{registry}/ml/a", plain_http=True)
    with pytest.raises(oci.PushError, match="wants a login and no credentials Secret is set"):
        oci.push(spec, adapter, "j", "base")


def test_wrong_password_is_refused(registry: str, adapter: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(dockerconfigjson(registry, password="wrong"))
    spec = OciSpec(repository=f"{registry}/ml/a", plain_http=True, credentials_file=str(bad))
    with pytest.raises(oci.PushError, match=r"failed|refused|401|unauthorized"):
        oci.push(spec, adapter, "j", "base")


def test_missing_credentials_file_names_the_secret(adapter: Path, tmp_path: Path) -> None:
    spec = OciSpec(
        repository="127.0.0.1:5000/ml/a", plain_http=True, credentials_file=str(tmp_path / "x")
    )
    with pytest.raises(oci.PushError, match="credentialsSecretRef"):
        oci.push(spec, adapter, "j", "base")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:5000", True),
        ("198.18.0.7:5000", True),
        ("198.19.255.1", True),
        ("10.0.0.1:5000", False),
        ("192.168.1.2", False),
        ("registry.local:5000", False),
        ("ghcr.io", False),
    ],
)
def test_plain_http_only_for_loopback_and_test_net(host: str, allowed: bool) -> None:
    assert plain_http_allowed(host) is allowed
    if not allowed:
        with pytest.raises(ValueError, match="plainHttp is only allowed"):
            OciSpec(repository=f"{host}/a/b", plain_http=True)


def test_export_command_reports_to_the_operator(
    registry: str, credentials: Path, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finetune-trainer export`: exit 0, export.json on the claim, and the termination message
    the operator parses into ExportOutcome (the trainer↔operator contract, both sides)."""
    from finetune_operator.lifecycle import export as op_export
    from finetune_trainer import main

    from .conftest import base_config

    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    shutil.copytree(adapter, work / "output" / "adapter")
    oci_spec = {
        "repository": f"{registry}/ml/cli",
        "tag": "t1",
        "credentials_file": str(credentials),
        "plain_http": True,
    }
    cfg = base_config(work, tmp_path / "model", tmp_path / "data.jsonl")
    cfg["output"] = {"merge_adapter": False, "export": {"oci": oci_spec}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    term = tmp_path / "termination-log"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(term))
    assert main.main(["export", "--config", str(path)]) == 0
    on_claim = json.loads((work / "output" / "export.json").read_text())
    pod = {
        "status": {"containerStatuses": [{"state": {"terminated": {"message": term.read_text()}}}]}
    }
    outcomes = op_export.outcomes(pod)
    assert outcomes is not None and [(o.kind, o.ok) for o in outcomes] == [("oci", True)]
    assert outcomes[0].digest == on_claim["results"][0]["digest"]
    assert outcomes[0].location == f"{registry}/ml/cli:t1"

    # the registry refuses: exit 9 (ExportFailed), the report still written, the adapter intact
    bad = {**oci_spec, "credentials_file": str(tmp_path / "missing")}
    cfg["output"]["export"] = {"oci": bad}
    path.write_text(json.dumps(cfg))
    assert main.main(["export", "--config", str(path)]) == 9
    outcomes = op_export.outcomes(
        {
            "status": {
                "containerStatuses": [{"state": {"terminated": {"message": term.read_text()}}}]
            }
        }
    )
    assert outcomes is not None and outcomes[0].ok is False
    assert "credentialsSecretRef" in str(outcomes[0].error)
    assert (work / "output" / "adapter" / "adapter_config.json").is_file()

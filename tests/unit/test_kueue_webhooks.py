"""hack/lib/kueue-webhooks.py: which of Kueue's webhooks the tests register, and how."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "lib" / "kueue-webhooks.py"


def _webhook(name: str, group: str, resource: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": {"service": {"name": "webhook-service", "path": path}},
        "failurePolicy": "Fail",
        "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": [resource]}],
        "sideEffects": "None",
    }  # fmt: skip


MANIFESTS = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mutating-webhook-configuration"},
        "webhooks": [
            _webhook("mjob.kb.io", "batch", "jobs", "/mutate-batch-v1-job"),
            _webhook("mpod.kb.io", "", "pods", "/mutate--v1-pod"),
            _webhook("mworkload.kb.io", "kueue.x-k8s.io", "workloads", "/mutate-wl"),
        ],
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [
            _webhook("vdeployment.kb.io", "apps", "deployments", "/validate-apps"),
            _webhook("vpod.kb.io", "", "pods", "/validate--v1-pod"),
        ],
    },
]


@pytest.fixture
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kueue_webhooks", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_pod_and_kueue_webhooks_by_url_in_opted_in_namespaces(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(MANIFESTS))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"PEM")
    assert script.main([str(manifests), "https://127.0.0.1:19443", str(ca), "k", "v"]) == 0
    mutating, validating = yaml.safe_load_all(capsys.readouterr().out)
    assert mutating["metadata"]["name"] == "fto-kueue-mutating"
    assert [w["name"] for w in mutating["webhooks"]] == ["mpod.kb.io", "mworkload.kb.io"]
    assert [w["name"] for w in validating["webhooks"]] == ["vpod.kb.io"]
    pod = mutating["webhooks"][0]
    assert pod["clientConfig"] == {
        "url": "https://127.0.0.1:19443/mutate--v1-pod",
        "caBundle": base64.b64encode(b"PEM").decode(),
    }
    assert pod["namespaceSelector"] == {"matchLabels": {"k": "v"}}
    assert "namespaceSelector" not in mutating["webhooks"][1]  # Kueue's own objects: everywhere

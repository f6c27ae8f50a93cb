"""docs/install.md says what the code does: its sample job is valid, its paths exist, the CRD
upgrade step names the chart's CRD, and the chart's BASE_IMAGE is the one it tells users to pin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from finetune_operator import crd
from finetune_operator import models as m

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "docs/install.md").read_text()


def test_the_verification_job_is_valid() -> None:
    found = re.search(r"```yaml\n# verify.yaml\n(.*?)```", TEXT, re.S)
    assert found
    config_map, job = yaml.safe_load_all(found[1])
    assert config_map["kind"] == "ConfigMap"
    parsed = m.parse_job({**job, "metadata": {**job["metadata"], "uid": "u"}})
    assert parsed.spec.resources.gpus == 1
    assert parsed.spec.dataset.config_map is not None
    assert parsed.spec.dataset.config_map.name == config_map["metadata"]["name"]


def test_crd_upgrade_step_applies_the_charts_crd() -> None:
    step = "kubectl apply --server-side --force-conflicts -f ./charts/finetune-operator/crds/"
    assert step in TEXT
    (crd_file,) = (ROOT / "charts/finetune-operator/crds").glob("*.yaml")
    assert yaml.safe_load(crd_file.read_text()) == crd.build_crd()


def test_the_pinned_trainer_base_is_the_documented_one() -> None:
    dockerfile = (ROOT / "trainer-image/Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert not base.endswith(":latest") and (":" in base.rsplit("/", 1)[-1] or "@sha256:" in base)
    assert f"docker pull {base}" in TEXT


@pytest.mark.parametrize("doc", ["docs/install.md", "docs/development.md", "README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), target


def test_the_images_llama_cpp_is_the_pinned_one() -> None:
    """The GPU image's builder stage compiles the llama.cpp the tests use (hack/versions.sh), and
    the offline local build copies that version in (the stage refuses another)."""
    dockerfile = (ROOT / "trainer-image/Dockerfile").read_text()
    (default,) = re.findall(r"^ARG LLAMA_CPP_PYTHON_VERSION=(\S+)$", dockerfile, re.M)
    versions = (ROOT / "hack/versions.sh").read_text()
    (pinned,) = re.findall(r"^export LLAMA_CPP_PYTHON_VERSION=(\S+)", versions, re.M)
    assert default == pinned
    assert re.search(r"^ARG LLAMA_CPP_SOURCE=build$", dockerfile, re.M)
    assert "COPY --from=llama-cpp /opt/llama.cpp /opt/llama.cpp" in dockerfile
    assert "LLAMA_CPP_SOURCE=prebuilt" in (ROOT / "hack/images.sh").read_text()
    assert "LLAMA_CPP_SOURCE=build" in TEXT

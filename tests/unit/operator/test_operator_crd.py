"""The generated CRD: structural, no leftovers of pydantic's JSON Schema, in sync with the
files on disk; its CEL rules (evaluated with cel-python) agree with the models and the trainer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from finetune_operator import builders, crd, generate
from finetune_operator import models as m
from finetune_operator.settings import Settings
from finetune_trainer import config as trainer_config

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_every_node_is_structural() -> None:
    for path, node in _walk(SCHEMA):
        text = yaml.safe_dump(node)
        assert "$ref" not in text and "$defs" not in text, path
        assert "title" not in node and "const" not in node, path
        assert node.get("type") != "null", path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "anyOf" not in node and "allOf" not in node and "oneOf" not in node, path
        assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), (
            path
        )
        if node.get("additionalProperties") is not None:
            assert isinstance(node["additionalProperties"], dict), path


def test_every_spec_field_is_documented() -> None:
    for path, node in _walk(SCHEMA["properties"]["spec"], ".spec"):
        if path.endswith("[]") or path.endswith("{}"):
            continue
        assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_free_form_only_where_needed() -> None:
    free = [p for p, n in _walk(SCHEMA) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert free == [
        ".spec.podTemplate.tolerations[]",
        ".spec.podTemplate.affinity",
        ".spec.podTemplate.env[].valueFrom",
        ".spec.podTemplate.volumes[]",
        ".spec.podTemplate.volumeMounts[]",
    ]


def test_crd_shape() -> None:
    obj = crd.build_crd()
    spec = obj["spec"]
    assert obj["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert spec["names"]["shortNames"] == ["ftj"]
    # not in `kubectl get all` / `kubectl delete all`: jobs hold hours of GPU work
    assert "all" not in spec["names"]["categories"] and "finetune" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Step", "Loss", "ETA", "Age"]
    conds = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map"
    assert SCHEMA["properties"]["spec"]["properties"]["resources"]["default"] == {
        "gpus": 1,
        "nodes": 1,
    }


def test_files_on_disk_are_current(tmp_path: Path) -> None:
    assert generate.main(["--root", str(ROOT), "--check"]) == 0
    assert generate.main(["--root", str(tmp_path)]) == 0
    crd_file = tmp_path / "crds/finetune.dev_finetunejobs.yaml"
    assert yaml.safe_load(crd_file.read_text()) == crd.build_crd()
    crd_file.write_text(crd_file.read_text() + "# drift\n")
    assert generate.main(["--root", str(tmp_path), "--check"]) == 1


def test_cluster_role_is_least_privilege() -> None:
    role = crd.build_cluster_role()
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}  # fmt: skip
    assert ("", "secrets") not in verbs
    assert "delete" not in verbs[("", "persistentvolumeclaims")]
    assert verbs[("", "nodes")] == {"list"}  # GPU memory labels; never a single node
    assert all("*" not in v for v in verbs.values())


# ----------------------------------------------------------------------------- CEL, evaluated


_ENV = celpy.Environment()
_RULES: list[tuple[str, str, Any]] = []
for _path, _node in _walk(SCHEMA):
    for _rule in _node.get("x-kubernetes-validations", []):
        if "oldSelf" not in _rule["rule"]:
            _RULES.append((_path, _rule["message"], _ENV.program(_ENV.compile(_rule["rule"]))))


def _default(node: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and node.get("properties"):
        value = dict(value)
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _default(sub, value[name])
    return value


def _at(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def cel_errors(spec: dict[str, Any], name: str = "bot") -> list[str]:
    """Messages of the CEL rules (not transition rules) that reject this object."""
    obj = _default(SCHEMA, {"metadata": {"name": name}, "spec": spec})
    errors = []
    for path, message, program in _RULES:
        value = _at(obj, path)
        if value is None:
            continue
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(message)
    return errors


@pytest.mark.parametrize(
    ("dataset", "rejected"),
    [
        ({"url": "https://x/t.jsonl", "sha256": "0f" * 32, "maxBytes": 10}, False),
        ({"pvc": "data", "path": "t.jsonl", "sha256": "0f" * 32}, True),
        ({"hub": "org/d", "maxBytes": 10}, True),
    ],
)
def test_download_checks_apply_to_url_datasets_only(
    dataset: dict[str, Any], rejected: bool
) -> None:
    spec = {"model": {"name": "org/m"}, "dataset": dataset, "output": {"pvc": "out"}}
    message = "dataset.sha256 and dataset.maxBytes apply to dataset.url only"
    assert (message in cel_errors(spec)) == rejected
    props = SCHEMA["properties"]["spec"]["properties"]["dataset"]["properties"]
    assert props["sha256"]["pattern"] == "^[0-9a-f]{64}$" and props["maxBytes"]["minimum"] == 1


def test_every_rule_compiles() -> None:
    assert len(_RULES) >= 20


_opt = s.none() | s.just("x")
training = s.fixed_dictionaries(
    {"batchSize": s.integers(1, 64), "learningRate": s.sampled_from([1e-5, 2e-4, 0.5, 1.0])},
    optional={
        "epochs": s.sampled_from([0.5, 1.0, 3.0]),
        "maxSteps": s.integers(1, 1000),
        "microBatchSize": s.integers(1, 16),
    },
)
model = s.fixed_dictionaries({}, optional={
    "name": s.just("org/m"), "pvc": s.just("models"),
    "path": s.sampled_from(["m", "a/b", "/abs", "../x"]),
})  # fmt: skip
dataset = s.fixed_dictionaries({}, optional={
    "url": s.sampled_from(["https://x/y.jsonl", "http://x/y", "ftp://x"]),
    "pvc": s.just("data"), "path": s.sampled_from(["t.jsonl", "/t", "a/../b"]),
    "hub": s.just("org/d"), "configMap": s.just({"name": "cm"}),
    "sha256": s.just("0f" * 32), "maxBytes": s.integers(1, 2**40),
})  # fmt: skip
spec_strategy = s.fixed_dictionaries(
    {
        "model": model,
        "dataset": dataset,
        "training": training,
        "method": s.sampled_from(["lora", "qlora", "full"]),
        "resources": s.fixed_dictionaries({"gpus": s.integers(-1, 9)}),
        "output": s.sampled_from([{"pvc": "out"}, {"size": "1Gi"}, {"pvc": "o", "size": "1Gi"}]),
    },
    optional={
        "lora": s.fixed_dictionaries({}, optional={"r": s.integers(0, 64),
                                                   "dropout": s.sampled_from([0.0, 0.1, 1.0])}),
        "backend": s.sampled_from(["auto", "unsloth", "transformers"]),
    },
)  # fmt: skip


@s.composite
def valid_spec(draw: s.DrawFn) -> dict[str, Any]:
    """Specs built to pass every rule (the other strategy mostly breaks some)."""
    gpus = draw(s.integers(0, 8))
    method = draw(s.sampled_from(["lora", "full"] + (["qlora"] if gpus else [])))
    batch = draw(s.integers(1, 64))
    training: dict[str, Any] = {"batchSize": batch}
    if draw(s.booleans()):
        training["epochs"] = draw(s.sampled_from([0.5, 1.0, 2.0]))
    else:
        training["maxSteps"] = draw(s.integers(1, 10_000))
    micros = [d for d in range(1, batch + 1) if batch % (d * max(gpus, 1)) == 0]
    if micros and draw(s.booleans()):
        training["microBatchSize"] = draw(s.sampled_from(micros))
    spec: dict[str, Any] = {
        "model": draw(s.sampled_from([{"name": "org/m"}, {"pvc": "models", "path": "a/b"}])),
        "dataset": draw(s.sampled_from([
            {"url": "https://x/t.jsonl"}, {"pvc": "data", "path": "t.jsonl"}, {"hub": "org/d"},
            {"configMap": {"name": "cm"}, "format": "prompt-completion"},
        ])),
        "method": method,
        "training": training,
        "resources": {"gpus": gpus},
        "output": draw(s.sampled_from([{"pvc": "out"}, {"size": "1Gi", "storageClass": "x"}])),
        "backend": draw(s.sampled_from(["auto", "transformers"] + (["unsloth"] if gpus else []))),
    }  # fmt: skip
    if method != "full" and draw(s.booleans()):
        spec["lora"] = {"r": draw(s.integers(1, 1024)), "dropout": draw(s.sampled_from([0.0, 0.5]))}
    evaluation = draw(s.sampled_from([
        None, {"fraction": 0.1, "everySteps": 5}, {"dataset": {"url": "https://x/e.jsonl"}},
        {"dataset": {"hub": "org/e"}, "prompts": ["Hi", "x" * 2000], "maxNewTokens": 8},
    ] + ([{"dataset": {"path": "eval.jsonl"}}] if "pvc" in spec["dataset"] else [])))  # fmt: skip
    if evaluation is not None:
        spec["evaluation"] = evaluation
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_spec())
def test_valid_specs_pass_every_rule(spec: dict[str, Any]) -> None:
    assert cel_errors(spec) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_strategy | valid_spec())
def test_what_the_apiserver_admits_the_operator_and_trainer_accept(spec: dict[str, Any]) -> None:
    errors = cel_errors(spec)
    t = spec["training"]
    procs = max(spec["resources"]["gpus"], 1)  # the micro-batch runs once per GPU
    expected_training = ("epochs" in t) != ("maxSteps" in t) and (
        "microBatchSize" not in t or t["batchSize"] % (t["microBatchSize"] * procs) == 0
    )
    training_errors = [e for e in errors if e.startswith("training")]
    assert (not training_errors) == expected_training
    sources = sum(k in spec["model"] for k in ("name", "pvc"))
    assert ("model: set exactly one of name (hub id) or pvc (+ path)" in errors) == (sources != 1)
    gpus = spec["resources"]["gpus"]
    assert ("resources.gpus must be between 0 (CPU-only) and 8 (per node)" in errors) == (
        not 0 <= gpus <= 8
    )
    if errors:
        return
    job = m.parse_job({"metadata": {"name": "bot", "namespace": "ml", "uid": "u"}, "spec": spec})
    assert job.spec.method != "qlora" or job.spec.resources.gpus >= 1
    config = builders.trainer_config(job, 1, None, None, Settings())
    trainer_config.parse_config(config)
    pod = builders.train_pod(job, 1, Settings())
    assert pod["metadata"]["name"] == "bot-1"

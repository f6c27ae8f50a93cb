"""Every CEL rule of the generated CRD, rejected by the real apiserver with its message; the
samples accepted; model/dataset/method immutable unless suspended."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.harness import REPO_ROOT, Cluster

pytestmark = pytest.mark.integration

CRD = REPO_ROOT / "crds" / "finetune.dev_finetunejobs.yaml"

GOOD: dict[str, Any] = {
    "model": {"name": "org/model"},
    "dataset": {"url": "https://example.com/train.jsonl"},
    "method": "lora",
    "training": {"maxSteps": 10, "batchSize": 8},
    "resources": {"gpus": 1},
    "output": {"pvc": "out"},
}

# (what is wrong, spec overrides (None deletes a key), the rule's message)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("two model sources", {"model": {"name": "a/b", "pvc": "m", "path": "x"}},
     "model: set exactly one of name (hub id) or pvc (+ path)"),
    ("no model source", {"model": {"revision": "main"}},
     "model: set exactly one of name (hub id) or pvc (+ path)"),
    ("model pvc without path", {"model": {"pvc": "m"}}, "model: pvc and path go together"),
    ("absolute model path", {"model": {"pvc": "m", "path": "/etc"}},
     "model.path must be relative to the PVC and must not contain '..'"),
    ("two dataset sources", {"dataset": {"url": "https://x/y", "hub": "a/b"}},
     "dataset: set exactly one of url, pvc (+ path), hub or configMap"),
    ("dataset pvc without path", {"dataset": {"pvc": "d"}}, "dataset: pvc and path go together"),
    ("ftp url", {"dataset": {"url": "ftp://x/y"}},
     "dataset.url must start with http:// or https://"),
    ("dataset path escaping", {"dataset": {"pvc": "d", "path": "../secret"}},
     "dataset.path must be relative to the PVC and must not contain '..'"),
    ("checksum without url", {"dataset": {"pvc": "d", "path": "t.jsonl", "sha256": "0f" * 32}},
     "dataset.sha256 and dataset.maxBytes apply to dataset.url only"),
    ("lora rank 0", {"lora": {"r": 0}}, "lora.r must be between 1 and 1024"),
    ("lora alpha 0", {"lora": {"alpha": 0}}, "lora.alpha must be greater than 0"),
    ("lora dropout 1", {"lora": {"dropout": 1.0}}, "lora.dropout must be in [0, 1)"),
    ("epochs and maxSteps", {"training": {"epochs": 1, "maxSteps": 5, "batchSize": 8}},
     "training: set exactly one of epochs or maxSteps"),
    ("neither epochs nor maxSteps", {"training": {"batchSize": 8}},
     "training: set exactly one of epochs or maxSteps"),
    ("batch not a multiple", {"training": {"maxSteps": 5, "batchSize": 10, "microBatchSize": 4}},
     "training.batchSize must be a multiple of training.microBatchSize"),
    ("learning rate 0", {"training": {"maxSteps": 5, "learningRate": 0}},
     "training.learningRate must be in (0, 1]"),
    ("epochs 0", {"training": {"epochs": 0}}, "training.epochs must be in (0, 1000]"),
    ("warmup ratio 1", {"training": {"maxSteps": 5, "warmupRatio": 1.0}},
     "training.warmupRatio must be in [0, 1)"),
    ("9 gpus", {"resources": {"gpus": 9}},
     "resources.gpus must be between 0 (CPU-only) and 8 (per node)"),
    ("negative gpus", {"resources": {"gpus": -1}},
     "resources.gpus must be between 0 (CPU-only) and 8 (per node)"),
    ("plain http to a routable registry",
     {"output": {"pvc": "out", "export": {"oci": {"repository": "registry.example.com/a",
                                                   "plainHttp": True}}}},
     "output.export.oci.plainHttp is only allowed for 127.0.0.1 or 198.18.0.0/15"),
    ("output pvc and size", {"output": {"pvc": "out", "size": "10Gi"}},
     "output: set exactly one of pvc (existing claim) or size (new claim)"),
    ("storageClass with pvc", {"output": {"pvc": "out", "storageClass": "fast"}},
     "output.storageClass only applies with output.size"),
    ("qlora on cpu", {"method": "qlora", "resources": {"gpus": 0}},
     "method qlora needs resources.gpus >= 1 (4-bit quantisation runs on CUDA only)"),
    ("lora settings with full", {"method": "full", "lora": {"r": 8}},
     "lora settings apply only to methods lora and qlora"),
    ("unsloth on cpu", {"backend": "unsloth", "resources": {"gpus": 0}},
     "backend unsloth needs resources.gpus >= 1"),
    ("model name escaping", {"model": {"name": "../../etc"}},
     "model.name must match ^[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?$ and must "
     "not contain '..' (no absolute or parent paths)"),
    ("revision absolute", {"model": {"name": "a/b", "revision": "/etc"}},
     "model.revision must not start with '/' or contain '..'"),
    ("dataset hub escaping", {"dataset": {"hub": "a/../b"}},
     "dataset.hub must match ^[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?$ and must "
     "not contain '..' (no absolute or parent paths)"),
    ("configMap key escaping", {"dataset": {"configMap": {"name": "d", "key": "../x"}}},
     "dataset.configMap.key must match ^[-._a-zA-Z0-9]+$ and must not contain '..' (no absolute "
     "or parent paths)"),
    ("micro-batch x gpus over the batch",
     {"training": {"maxSteps": 5, "batchSize": 8, "microBatchSize": 4}, "resources": {"gpus": 4}},
     "training.batchSize must be a multiple of training.microBatchSize x resources.gpus (the "
     "effective batch is micro-batch x accumulation x GPUs)"),
    ("eval fraction and dataset", {"evaluation": {"fraction": 0.1, "dataset": {"hub": "a/b"}}},
     "evaluation: set at most one of fraction (a held-out split of spec.dataset) or dataset (a "
     "separate file)"),
    ("eval fraction 0.9", {"evaluation": {"fraction": 0.9}},
     "evaluation.fraction must be in (0, 0.5]"),
    ("eval fraction and validationSplit",
     {"dataset": {"url": "https://x/y", "validationSplit": 0.1}, "evaluation": {"fraction": 0.1}},
     "set only one of evaluation.fraction and dataset.validationSplit"),
    ("eval path without a data volume", {"evaluation": {"dataset": {"path": "eval.jsonl"}}},
     "evaluation.dataset.path names a file next to the training data: it needs dataset.pvc or "
     "dataset.configMap"),
    ("eval dataset two sources", {"evaluation": {"dataset": {"hub": "a/b", "url": "https://x"}}},
     "evaluation.dataset: set exactly one of url, hub or path"),
    ("eval ftp url", {"evaluation": {"dataset": {"url": "ftp://x/y"}}},
     "evaluation.dataset.url must start with http:// or https://"),
    ("eval hub escaping", {"evaluation": {"dataset": {"hub": "a/../b"}}},
     "evaluation.dataset.hub must match ^[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?$ "
     "and must not contain '..' (no absolute or parent paths)"),
    ("eval path escaping",
     {"dataset": {"pvc": "d", "path": "t.jsonl"}, "evaluation": {"dataset": {"path": "../x"}}},
     "evaluation.dataset.path must be relative and must not contain '..'"),
    ("hub token key absolute", {"hubTokenSecretRef": {"name": "hf", "key": "/etc/passwd"}},
     "hubTokenSecretRef.key must match ^[-._a-zA-Z0-9]+$ and must not contain '..' (no absolute "
     "or parent paths)"),
    ("two chat template sources",
     {"dataset": {"url": "https://x/y", "format": "messages",
                  "chatTemplate": {"name": "chatml", "template": "{{ x }}"}}},
     "dataset.chatTemplate: set exactly one of name, template or configMap"),
    ("chat template on text", {"dataset": {"url": "https://x/y", "format": "text",
                                           "chatTemplate": {"name": "chatml"}}},
     "dataset.chatTemplate applies to formats alpaca, sharegpt and messages"),
    ("chat template key escaping",
     {"dataset": {"url": "https://x/y", "chatTemplate": {"configMap": {"name": "t", "key": "/x"}}}},
     "dataset.chatTemplate.configMap.key must match ^[-._a-zA-Z0-9]+$ and must not contain '..' "
     "(no absolute or parent paths)"),
    ("mlflow uri with credentials",
     {"tracking": {"mlflow": {"trackingUri": "https://u:p@mlflow.example.com"}}},
     "tracking.mlflow.trackingUri must be http(s)://host[:port][/path], without credentials (use "
     "the Secret), query or fragment"),
    ("mlflow uri at the metadata address",
     {"tracking": {"mlflow": {"trackingUri": "http://169.254.169.254/latest"}}},
     "tracking.mlflow.trackingUri must not name a link-local, unspecified or cloud metadata "
     "address"),
    ("wandb base url shape", {"tracking": {"wandb": {"project": "p", "baseUrl": "file:///x"}}},
     "tracking.wandb.baseUrl must be http(s)://host[:port][/path], without credentials (use the "
     "Secret), query or fragment"),
    ("wandb base url metadata",
     {"tracking": {"wandb": {"project": "p", "baseUrl": "http://METADATA.google.internal/"}}},
     "tracking.wandb.baseUrl must not name a link-local, unspecified or cloud metadata address"),
    ("wandb online without key", {"tracking": {"wandb": {"project": "p", "mode": "online"}}},
     "tracking.wandb.mode online needs apiKeySecretRef"),
]  # fmt: skip

IMMUTABLE = [
    ("model", {"model": {"name": "org/other"}},
     "spec.model is immutable while the job is not suspended (set suspend: true first)"),
    ("dataset", {"dataset": {"url": None, "hub": "org/data"}},
     "spec.dataset is immutable while the job is not suspended (set suspend: true first)"),
    ("method", {"method": "full"},
     "spec.method is immutable while the job is not suspended (set suspend: true first)"),
]  # fmt: skip

NAME_RULE = "metadata.name must be at most 63 characters (it labels the job's pods)"

# edits a resume cannot honour, refused once status.checkpoint exists (models.EDIT_RULES)
LOCKED = [
    ("batchSize", {"training": {"maxSteps": 10, "batchSize": 16}}, "training.batchSize"),
    ("maxSeqLength", {"training": {"maxSteps": 10, "batchSize": 8, "maxSeqLength": 512}},
     "training.maxSeqLength"),
    ("packing", {"training": {"maxSteps": 10, "batchSize": 8, "packing": False}},
     "training.packing"),
    ("seed", {"training": {"maxSteps": 10, "batchSize": 8, "seed": 1}}, "training.seed"),
    ("optimizer", {"training": {"maxSteps": 10, "batchSize": 8, "optimizer": "sgd"}},
     "training.optimizer"),
    ("method", {"method": "full"}, "method"),
    ("lora", {"lora": {"r": 4}}, "lora"),
]  # fmt: skip
LOCKED_MESSAGE = "{} cannot change once the job has a checkpoint (status.checkpoint)"
SHORTER_RULE = ("training.maxSteps cannot go below the step of the job's checkpoint "
                "(status.checkpoint.step): those steps are trained already")  # fmt: skip


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> dict[str, Any]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s"
    )
    loaded: dict[str, Any] = yaml.safe_load(CRD.read_text())
    return loaded


def _rules(schema: dict[str, Any]) -> list[dict[str, str]]:
    found = list(schema.get("x-kubernetes-validations", []))
    for sub in (schema.get("properties") or {}).values():
        found += _rules(sub)
    if isinstance(schema.get("items"), dict):
        found += _rules(schema["items"])
    return found


def _spec(overrides: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    for key, value in overrides.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def _obj(name: str, namespace: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_every_rule_has_a_case(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    messages = {r["message"] for r in _rules(schema)}
    covered = {msg for _, _, msg in BAD} | {msg for _, _, msg in IMMUTABLE} | {NAME_RULE}
    covered |= {SHORTER_RULE}
    locked = {m for m in messages if " cannot change once the job has a checkpoint " in m}
    assert {m.split(" cannot")[0] for m in locked} == {name for _, _, name in LOCKED}
    assert messages - locked == covered
    assert len(messages) >= 10


def test_good_object_is_accepted(cluster: Cluster, crd: dict[str, Any], namespace: str) -> None:
    out = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=_obj("ok", namespace, GOOD)
    )
    assert "created (server dry run)" in out


def test_tracking_and_chat_template_accepted(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    spec = _spec(
        {
            "dataset": {"url": "https://example.com/c.jsonl", "format": "messages",
                        "chatTemplate": {"name": "chatml"}},
            "tracking": {
                "mlflow": {"trackingUri": "http://mlflow.mlflow:5000",
                           "credentialsSecretRef": {"name": "mlflow"}},
                "wandb": {"project": "bots", "mode": "online", "apiKeySecretRef": {"name": "wb"},
                          "baseUrl": "https://wandb.example.com"},
            },
        }
    )  # fmt: skip
    out = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=_obj("ok", namespace, spec)
    )
    assert "created (server dry run)" in out


@pytest.mark.parametrize(("what", "overrides", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_object_is_rejected_with_the_rules_message(
    cluster: Cluster,
    crd: dict[str, Any],
    namespace: str,
    *,
    what: str,
    overrides: dict[str, Any],
    message: str,
) -> None:
    body = _obj("bad", namespace, _spec(overrides))
    with pytest.raises(RuntimeError) as err:
        cluster.kubectl("create", "--dry-run=server", "-f", "-", input=body)
    assert message in str(err.value), what


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({"sha256": "0F" * 32}, "should match '^[0-9a-f]{64}$'"),
        ({"sha256": "0f" * 31}, "spec.dataset.sha256"),
        ({"maxBytes": 0}, "spec.dataset.maxBytes"),
    ],
)
def test_download_checks_are_validated_at_the_door(
    cluster: Cluster, crd: dict[str, Any], namespace: str, dataset: dict[str, Any], message: str
) -> None:
    spec = _spec({"dataset": {"url": "https://example.com/t.jsonl?sig=s", **dataset}})
    with pytest.raises(RuntimeError) as err:
        cluster.kubectl("create", "--dry-run=server", "-f", "-", input=_obj("dl", namespace, spec))
    assert message in str(err.value)
    good = _spec({"dataset": {"url": "https://x/t.jsonl", "sha256": "0f" * 32, "maxBytes": 1}})
    out = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=_obj("dl", namespace, good)
    )
    assert "created (server dry run)" in out


def test_long_name_is_rejected(cluster: Cluster, crd: dict[str, Any], namespace: str) -> None:
    with pytest.raises(RuntimeError, match="at most 63 characters"):
        cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=_obj("x" * 64, namespace, GOOD)
        )


@pytest.mark.parametrize(("field", "change", "message"), IMMUTABLE, ids=[i[0] for i in IMMUTABLE])
def test_immutable_unless_suspended(
    cluster: Cluster,
    crd: dict[str, Any],
    namespace: str,
    *,
    field: str,
    change: dict[str, Any],
    message: str,
) -> None:
    cluster.kubectl("create", "-f", "-", input=_obj("job", namespace, GOOD))
    patch = json.dumps({"spec": change})
    with pytest.raises(RuntimeError) as err:
        cluster.kubectl("patch", "ftj", "job", "-n", namespace, "--type", "merge", "-p", patch)
    assert message in str(err.value), field
    # safe fields stay editable while running
    cluster.kubectl("patch", "ftj", "job", "-n", namespace, "--type", "merge",
                    "-p", '{"spec": {"training": {"learningRate": 0.0001}}}')  # fmt: skip
    # suspended: the change is accepted (it takes effect on resume)
    cluster.kubectl("patch", "ftj", "job", "-n", namespace, "--type", "merge",
                    "-p", '{"spec": {"suspend": true}}')  # fmt: skip
    cluster.kubectl("patch", "ftj", "job", "-n", namespace, "--type", "merge", "-p", patch)


@pytest.mark.parametrize(("what", "change", "name"), LOCKED, ids=[x[0] for x in LOCKED])
def test_edits_a_resume_cannot_honour_are_refused_once_a_checkpoint_exists(
    cluster: Cluster, crd: dict[str, Any], namespace: str, *, what: str, change: dict[str, Any],
    name: str,
) -> None:  # fmt: skip
    def patch(body: dict[str, Any], *extra: str) -> str:
        return cluster.kubectl("patch", "ftj", "job", "-n", namespace, "--type", "merge",
                               "-p", json.dumps(body), *extra)  # fmt: skip

    cluster.kubectl("create", "-f", "-", input=_obj("job", namespace, GOOD))
    patch({"spec": {"suspend": True}})
    patch({"spec": change}, "--dry-run=server")  # no checkpoint yet: nothing to honour
    checkpoint = {"status": {"checkpoint": {"step": 10, "path": "checkpoints/checkpoint-10"}}}
    patch(checkpoint, "--subresource=status")
    with pytest.raises(RuntimeError) as err:
        patch({"spec": change})
    assert LOCKED_MESSAGE.format(name) in str(err.value), what
    assert "Set it before the first checkpoint, or create a new job" in str(err.value)
    # what a resume honours stays editable (learning rate, length, micro-batch)
    patch({"spec": {"training": {"maxSteps": 20, "batchSize": 8, "learningRate": 0.0001,
                                 "microBatchSize": 4}}})  # fmt: skip
    patch({"spec": {"training": {"maxSteps": 10}}})  # down to the checkpoint's step: fine
    with pytest.raises(RuntimeError) as short:
        patch({"spec": {"training": {"maxSteps": 9}}})
    assert SHORTER_RULE in str(short.value)


def test_samples_pass_server_side_validation(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(REPO_ROOT / "manifests/samples")
    )
    assert out.count("finetunejob.finetune.dev/") == 3


def test_defaults_come_from_the_schema(
    cluster: Cluster, crd: dict[str, Any], namespace: str
) -> None:
    out = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=_obj("d", namespace, GOOD)
    )
    spec = json.loads(out)["spec"]
    assert spec["training"]["learningRate"] == 0.0002
    assert spec["checkpoint"] == {"everySteps": 50, "keep": 3}
    assert spec["retry"] == {"limit": 3, "backoffSeconds": 10, "maxBackoffSeconds": 600}
    assert spec["suspend"] is False and spec["backend"] == "auto"
    assert spec["model"]["trustRemoteCode"] is False

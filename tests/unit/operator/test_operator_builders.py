"""Builders compared as whole manifests; the planner's cluster-side helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator import planner
from finetune_operator.settings import Settings

JobF = Callable[..., m.FineTuneJob]
KQ = "kueue.x-k8s.io/queue-name"
SETTINGS = Settings(trainer_image="localhost/finetune-trainer:dev", termination_grace_seconds=300)
OWNER = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "name": "bot",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}
RICH: dict[str, Any] = {
    "model": {"pvc": "models", "path": "llama"},
    "dataset": {"pvc": "data", "path": "t.jsonl"},
    "method": "qlora",
    "training": {"epochs": 2, "batchSize": 16, "maxSteps": None},
    "resources": {"gpus": 2, "cpu": 4, "memory": "24Gi"},
    "hubTokenSecretRef": {"name": "hf"},
    "podTemplate": {
        "nodeSelector": {"gpu": "3060"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "env": [{"name": "A", "value": "1"}],
        "priorityClassName": "high",
        "labels": {"kueue.x-k8s.io/queue-name": "q"},
    },
}
SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
MOUNTS = [
    {"name": "config", "mountPath": "/etc/finetune", "readOnly": True},
    {"name": "workspace", "mountPath": "/workspace", "subPath": "bot"},
    {"name": "cache", "mountPath": "/cache"},
    {"name": "models", "mountPath": "/models", "readOnly": True},
    {"name": "data", "mountPath": "/data", "readOnly": True},
    {"name": "hub-token", "mountPath": "/var/run/secrets/finetune.dev/hub", "readOnly": True},
]
VOLUMES = [
    {"name": "config", "configMap": {"name": "bot-config"}},
    {"name": "workspace", "persistentVolumeClaim": {"claimName": "out"}},
    {"name": "cache", "emptyDir": {}},
    {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
    {"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}},
    {"name": "hub-token", "secret": {"secretName": "hf", "optional": True}},
]
ENV = [
    {"name": "HF_HOME", "value": "/cache/huggingface"},
    {"name": "FINETUNE_JOB", "value": "bot"},
    {"name": "FTO_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "A", "value": "1"},
]


def test_train_pod(make_job: JobF) -> None:
    pod = b.train_pod(make_job(spec=RICH), 3, SETTINGS)
    assert pod == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bot-3",
            "namespace": "ml",
            "labels": {
                "kueue.x-k8s.io/queue-name": "q",
                "app.kubernetes.io/managed-by": "finetune-operator",
                "finetune.dev/job": "bot",
                "finetune.dev/role": "train",
                "finetune.dev/attempt": "3",
                "kueue.x-k8s.io/pod-group-name": "bot-3",
            },
            "ownerReferences": [OWNER],
            "annotations": {
                "kueue.x-k8s.io/pod-group-total-count": "1",
                "kueue.x-k8s.io/retriable-in-group": "false",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "bot-trainer",
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 300,
            "shareProcessNamespace": True,
            "securityContext": POD_SECURITY,
            "containers": [
                {
                    "name": "trainer",
                    "image": "localhost/finetune-trainer:dev",
                    "imagePullPolicy": "IfNotPresent",
                    "command": [
                        "finetune-trainer",
                        "train",
                        "--config",
                        "/etc/finetune/config.json",
                    ],
                    "env": ENV,
                    "resources": {
                        "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "2"},
                        "limits": {"memory": "24Gi", "nvidia.com/gpu": "2"},
                    },
                    "volumeMounts": [*MOUNTS, {"name": "dshm", "mountPath": "/dev/shm"}],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": SECURITY,
                }
            ],
            "volumes": [*VOLUMES, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
            "nodeSelector": {"gpu": "3060"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "priorityClassName": "high",
        },
    }


@pytest.mark.parametrize(
    ("spec", "queue"),
    [
        ({"queueName": "team-a"}, "team-a"),
        # spec.queueName wins over a queue label in the pod template (allowed before it existed)
        ({"queueName": "team-a", "podTemplate": {"labels": {KQ: "old"}}}, "team-a"),
        ({"podTemplate": {"labels": {KQ: "old"}}}, "old"),
    ],
)
def test_train_pod_joins_one_kueue_pod_group_per_attempt(
    make_job: JobF, spec: dict[str, Any], queue: str
) -> None:
    job = make_job(spec=spec)
    for attempt in (1, 2):
        meta = b.train_pod(job, attempt, SETTINGS)["metadata"]
        assert meta["labels"][KQ] == queue
        assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == f"bot-{attempt}"
        assert meta["annotations"] == {
            "kueue.x-k8s.io/pod-group-total-count": "1",
            "kueue.x-k8s.io/retriable-in-group": "false",
        }
    assert m.training_pod_count(job.spec) == 1


def test_without_a_queue_no_kueue_metadata(make_job: JobF) -> None:
    meta = b.train_pod(make_job(), 1, SETTINGS)["metadata"]
    assert not [k for k in meta["labels"] if k.startswith("kueue.x-k8s.io/")]
    assert "annotations" not in meta


def test_prepare_pod_is_never_queued(make_job: JobF) -> None:
    """The CPU prepare stage runs before the job takes a place in a GPU queue."""
    job = make_job(spec={"queueName": "team-a", "podTemplate": {"labels": {KQ: "old", "a": "b"}}})
    meta = b.prepare_pod(job, SETTINGS)["metadata"]
    assert not [k for k in meta["labels"] if k.startswith("kueue.x-k8s.io/")]
    assert meta["labels"]["a"] == "b"
    assert "annotations" not in meta


def test_prepare_pod_is_cpu_only(make_job: JobF) -> None:
    pod = b.prepare_pod(make_job(spec=RICH), SETTINGS)
    assert pod["metadata"]["name"] == "bot-prepare"
    assert pod["metadata"]["labels"]["finetune.dev/role"] == "prepare"
    spec = pod["spec"]
    assert "priorityClassName" not in spec
    assert spec["volumes"] == VOLUMES
    container = spec["containers"][0]
    assert container["command"] == [
        "finetune-trainer",
        "prepare",
        "--config",
        "/etc/finetune/config.json",
    ]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }
    assert container["volumeMounts"] == MOUNTS and container["securityContext"] == SECURITY


def test_cpu_job_requests_no_gpu(make_job: JobF) -> None:
    job = make_job(spec={"resources": {"gpus": 0}, "image": "my/trainer:1"})
    pod = b.train_pod(job, 1, SETTINGS)
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {}
    assert container["image"] == "my/trainer:1"
    # shared memory for torch.distributed and dataloaders on every training pod, CPU too
    assert pod["spec"]["volumes"][-1] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert container["volumeMounts"][-1] == {"name": "dshm", "mountPath": "/dev/shm"}
    # one node: today's pod, no rendezvous, no Service
    assert pod["metadata"]["name"] == "bot-1" and "hostname" not in pod["spec"]
    assert not any(e["name"].startswith(("PET_", "NCCL_")) for e in container["env"])
    assert b.nodes_service(job) is None and b.train_pod_names(job, 1) == ["bot-1"]


TWO_NODES: dict[str, Any] = {
    **RICH,
    "resources": {"gpus": 2, "nodes": 2, "cpu": 4, "memory": "24Gi"},
    # the user's choice replaces the default of the same name; others are added
    "podTemplate": {**RICH["podTemplate"], "env": [{"name": "NCCL_SOCKET_IFNAME", "value": "ib0"},
                                                   {"name": "NCCL_P2P_DISABLE", "value": "1"}]},
}  # fmt: skip


def test_multi_node_pods_are_one_gang_under_a_headless_service(make_job: JobF) -> None:
    job = make_job(spec=TWO_NODES)
    single = b.train_pod(make_job(spec=RICH), 3, SETTINGS)
    pods = b.train_pods(job, 3, SETTINGS)
    assert [p["metadata"]["name"] for p in pods] == ["bot-3-node-0", "bot-3-node-1"]
    assert b.train_pod_names(job, 3) == ["bot-3-node-0", "bot-3-node-1"]
    for rank, pod in enumerate(pods):
        name = f"bot-3-node-{rank}"
        expected = json.loads(json.dumps(single))  # the one-node pod, plus only these
        expected["metadata"]["name"] = name
        expected["metadata"]["labels"]["finetune.dev/node-rank"] = str(rank)
        # one Kueue pod group per attempt: every node's pod counts
        expected["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] = "2"
        expected["spec"]["hostname"] = name
        expected["spec"]["subdomain"] = "bot-nodes"
        c = expected["spec"]["containers"][0]
        c["ports"] = [{"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}]
        c["env"] = [
            {"name": "HF_HOME", "value": "/cache/huggingface"},
            {"name": "FINETUNE_JOB", "value": "bot"},
            {"name": "FTO_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "PET_NNODES", "value": "2"},
            {"name": "PET_NPROC_PER_NODE", "value": "2"},
            {"name": "PET_NODE_RANK", "value": str(rank)},
            {"name": "PET_MASTER_ADDR", "value": "bot-3-node-0.bot-nodes"},
            {"name": "PET_MASTER_PORT", "value": "29500"},
            {"name": "NCCL_SOCKET_IFNAME", "value": "ib0"},
            {"name": "NCCL_P2P_DISABLE", "value": "1"},
        ]
        assert pod == expected
    assert b.nodes_service(job) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "bot-nodes",
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/managed-by": "finetune-operator",
                "finetune.dev/job": "bot",
            },
            "ownerReferences": [OWNER],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"finetune.dev/job": "bot", "finetune.dev/role": "train"},
            "ports": [{"name": "rendezvous", "port": 29500, "protocol": "TCP"}],
        },
    }
    assert m.training_pod_count(job.spec) == 2 and m.world_size(job.spec) == 4


def test_multi_node_cpu_job_gets_the_nccl_default_and_one_process_per_node(
    make_job: JobF,
) -> None:
    job = make_job(spec={"resources": {"gpus": 0, "nodes": 3}})
    pods = b.train_pods(job, 1, SETTINGS)
    env = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods]
    assert [e["PET_NODE_RANK"] for e in env] == ["0", "1", "2"]
    assert {e["PET_NPROC_PER_NODE"] for e in env} == {"1"} and m.world_size(job.spec) == 3
    assert {e["NCCL_SOCKET_IFNAME"] for e in env} == {"eth0"}
    assert b.trainer_config(job, 1, None, None, SETTINGS)["nodes"] == 3


def test_evaluation_config_reads_a_separate_file_in_the_training_format(make_job: JobF) -> None:
    job = make_job(spec={"dataset": {"format": "prompt-completion", "fields": {"prompt": "q"}},
                          "evaluation": {"dataset": {"path": "eval.jsonl"}, "everySteps": 5,
                                         "prompts": ["Hi"], "maxNewTokens": 8}})  # fmt: skip
    config = b.trainer_config(job, 1, None, None, SETTINGS)
    assert config["evaluation"] == {
        "dataset": {"url": None, "path": "/data/eval.jsonl", "hub": None, "split": "test",
                    "format": "prompt_completion", "fields": {"prompt": "q"},
                    "validation_split": 0.0, "sha256": None, "max_bytes": None,
                    "chat_template": None},
        "every_steps": 5, "prompts": ["Hi"], "max_new_tokens": 8,
    }  # fmt: skip
    fraction = b.trainer_config(make_job(spec={"evaluation": {"fraction": 0.2}}), 1, None, None,
                                SETTINGS)  # fmt: skip
    assert fraction["dataset"]["validation_split"] == 0.2


def test_trainer_config(make_job: JobF) -> None:
    job = make_job(spec=RICH)
    config = b.trainer_config(job, 2, planner.BatchPlan(2, 4), 12288, SETTINGS)
    assert config == {
        "version": 1,
        "job": {"name": "bot", "namespace": "ml", "uid": "uid-1", "attempt": 2},
        "model": {"name": None, "path": "/models/llama", "revision": None,
                  "trust_remote_code": False},
        "dataset": {"url": None, "path": "/data/t.jsonl", "hub": None, "split": "train",
                    "format": "alpaca", "fields": {}, "validation_split": 0.0,
                    "sha256": None, "max_bytes": None, "chat_template": None},
        "evaluation": {"dataset": None, "every_steps": None, "prompts": [], "max_new_tokens": 64},
        "method": "qlora",
        "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": None},
        "training": {"epochs": 2.0, "max_steps": None, "learning_rate": 0.0002, "batch_size": 16,
                     "micro_batch_size": 2, "gradient_accumulation": 4, "max_seq_length": 2048,
                     "warmup_steps": 0, "warmup_ratio": 0.0, "scheduler": "linear",
                     "optimizer": "adamw_torch", "weight_decay": 0.0, "seed": 42,
                     "precision": "auto", "packing": True, "gradient_checkpointing": True},
        "checkpoint": {"every_steps": 50, "keep": 3},
        "output": {"merge_adapter": False, "export": None},
        "tracking": {"tensorboard": True, "mlflow": None, "wandb": None},
        "backend": "auto",
        "gpus": 2,
        "nodes": 1,
        "gpu_memory_mib": 12288,
        "paths": {"work": "/workspace", "model_cache": "/cache", "shared_model_cache": None,
                      "claim": "out"},
        "progress": {"config_map": "bot-progress", "namespace": "ml", "interval_seconds": 30.0,
                     "api_server": None},
        "hub_token_file": "/var/run/secrets/finetune.dev/hub/token",
    }  # fmt: skip
    cm = b.config_map(job, config)
    assert cm["metadata"] == {
        "name": "bot-config",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.dev/job": "bot"},
        "ownerReferences": [OWNER],
    }
    assert json.loads(cm["data"]["config.json"]) == config


def test_inline_dataset_and_hub_model(make_job: JobF) -> None:
    job = make_job(spec={"model": {"name": "org/m", "pvc": None, "path": None},
                         "dataset": {"configMap": {"name": "cm", "key": "d.jsonl"}, "pvc": None,
                                     "path": None, "format": "prompt-completion"}})  # fmt: skip
    config = b.trainer_config(job, 1, None, None, SETTINGS)
    assert config["model"]["name"] == "org/m" and config["model"]["path"] is None
    assert config["dataset"]["path"] == "/data/d.jsonl"
    assert config["dataset"]["format"] == "prompt_completion"
    volumes = b.train_pod(job, 1, SETTINGS)["spec"]["volumes"]
    assert {"name": "data", "configMap": {"name": "cm"}} in volumes
    assert b.referenced_pvcs(job) == ["out"]


@pytest.mark.parametrize(
    ("limit", "expected"), [(None, 10 * 2**30), (1000, 1000)], ids=["admin-default", "spec"]
)
def test_url_dataset_download_limits(make_job: JobF, limit: int | None, expected: int) -> None:
    """A URL dataset always gets a size cap (the spec's, else the operator's default) and its
    sha256; the trainer gets neither for other sources."""
    digest = "ab" * 32
    job = make_job(spec={"dataset": {"url": "https://x/t.jsonl?sig=s", "pvc": None, "path": None,
                                     "sha256": digest, "maxBytes": limit}})  # fmt: skip
    dataset = b.trainer_config(job, 1, None, None, SETTINGS)["dataset"]
    assert (dataset["sha256"], dataset["max_bytes"]) == (digest, expected)
    small = Settings(download_max_bytes=5)
    assert b.trainer_config(job, 1, None, None, small)["dataset"]["max_bytes"] == (limit or 5)


def test_rbac_allows_only_the_progress_config_map(make_job: JobF) -> None:
    job = make_job()
    meta = {
        "name": "bot-trainer",
        "namespace": "ml",
        "labels": {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.dev/job": "bot"},
        "ownerReferences": [OWNER],
    }
    assert b.service_account(job) == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
    }
    assert b.role(job) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta,
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["bot-progress"],
                "verbs": ["get", "patch", "update"],
            }
        ],
    }
    assert b.role_binding(job) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bot-trainer"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot-trainer", "namespace": "ml"}],
    }


def test_service_account_override_is_bound(make_job: JobF) -> None:
    job = make_job(spec={"podTemplate": {"serviceAccountName": "team-sa"}})
    assert b.role_binding(job)["subjects"][0]["name"] == "team-sa"
    assert b.train_pod(job, 1, SETTINGS)["spec"]["serviceAccountName"] == "team-sa"


def test_progress_config_map(make_job: JobF) -> None:
    cm = b.progress_config_map(make_job())
    assert cm["metadata"]["name"] == "bot-progress" and cm["data"] == {}
    assert cm["metadata"]["ownerReferences"] == [OWNER]


def test_output_pvc_only_for_size_and_not_owned(make_job: JobF) -> None:
    assert b.output_pvc(make_job()) is None
    job = make_job(spec={"output": {"pvc": None, "size": "50Gi", "storageClass": "fast"}})
    assert b.output_pvc(job) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "bot-output",
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/managed-by": "finetune-operator",
                "finetune.dev/job": "bot",
                "finetune.dev/job-uid": "uid-1",
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "50Gi"}},
            "storageClassName": "fast",
        },
    }
    workspace = b.train_pod(job, 1, SETTINGS)["spec"]["volumes"][1]
    assert workspace == {"name": "workspace", "persistentVolumeClaim": {"claimName": "bot-output"}}


# ------------------------------------------------------------------------------------ planner


def _node(name: str, gpus: int, memory: str | None, **labels: str) -> dict[str, Any]:
    lbl = dict(labels)
    if memory:
        lbl["nvidia.com/gpu.memory"] = memory
    return {"metadata": {"name": name, "labels": lbl},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}  # fmt: skip


def test_gpu_memory_from_nodes_or_hint() -> None:
    nodes = [_node("a", 2, "12288", pool="home"), _node("b", 8, "81920", pool="dc"),
             _node("c", 1, "98304"), _node("d", 4, None)]  # fmt: skip
    assert planner.gpu_memory_mib(nodes, 2, {}, None) == 81920
    assert planner.gpu_memory_mib(nodes, 2, {"pool": "home"}, None) == 12288
    assert planner.gpu_memory_mib(nodes, 1, {}, None) == 98304
    assert planner.gpu_memory_mib(nodes, 2, {}, 24576) == 24576
    assert planner.gpu_memory_mib(nodes, 0, {}, None) is None
    assert planner.gpu_memory_mib(nodes, 16, {}, None) is None


def test_cuda_oom_keeps_the_effective_batch() -> None:
    assert planner.after_cuda_oom(16, 4, 2) == planner.BatchPlan(2, 4)
    assert planner.after_cuda_oom(16, 3, 1) == planner.BatchPlan(1, 16)
    assert planner.after_cuda_oom(16, 1, 1) is None
    assert planner.accumulation_for(16, 4, 0) == 4


DERIVED = Settings(trainer_image="localhost/finetune-trainer:dev")  # grace 0 = derived per job


def test_grace_period_is_derived_from_the_model_size_and_the_measured_step(
    make_job: JobF,
) -> None:
    def grace(spec: dict[str, Any], status: dict[str, Any] | None = None) -> int:
        pod = b.train_pod(make_job(spec=spec, status=status), 1, DERIVED)
        value: int = pod["spec"]["terminationGracePeriodSeconds"]
        return value

    seven_b = {"plan": {"parameters": 7_000_000_000}}
    # no prepare result yet: the former fixed default
    assert grace({"method": "lora"}) == planner.UNKNOWN_MODEL_GRACE_SECONDS
    # LoRA 7B: 0.6 B/param = 4.2 GB at 100 MiB/s = 40 s + a 120 s step (unmeasured) + 30 s
    assert grace({"method": "lora"}, seven_b) == 191
    # full 7B: 98 GB of weights + Adam moments = 935 s
    assert grace({"method": "full"}, seven_b) == 1085
    # merging writes 14 GB of bf16 weights at the end: that is the longest save of a LoRA job
    merged = {"method": "lora", "output": {"mergeAdapter": True}}
    assert grace(merged, seven_b) == 284
    # a measured step (ETA / steps left = 2 s) replaces the 120 s guess
    measured = {**seven_b, "progress": {"step": 100, "totalSteps": 400, "etaSeconds": 600}}
    assert grace({"method": "lora"}, measured) == 73
    # the admin's fixed value wins; the prepare pod (nothing to save) gets the margin only
    assert (
        b.train_pod(make_job(status=seven_b), 1, SETTINGS)["spec"]["terminationGracePeriodSeconds"]
        == 300
    )
    assert b.prepare_pod(make_job(), DERIVED)["spec"]["terminationGracePeriodSeconds"] == 30
    huge = {"plan": {"parameters": 10**13}}
    assert grace({"method": "full"}, huge) == planner.MAX_GRACE_SECONDS


def test_step_seconds_from_progress() -> None:
    assert planner.step_seconds(100, 400, 600) == 2.0
    assert planner.step_seconds(None, 400, 600) is None
    assert planner.step_seconds(400, 400, 0) is None  # nothing left to divide by


def test_a_shared_cache_claim_is_read_only_to_the_job(make_job: JobF) -> None:
    """One job must not poison what another loads: the claim is mounted read-only (the claim's
    readOnly holds for any mount of it) and downloads go to the pod's own emptyDir."""
    job = make_job(spec={"cache": {"pvc": "models"}})
    spec = b.train_pod(job, 1, SETTINGS)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {v["name"]: v for v in spec["containers"][0]["volumeMounts"]}
    assert volumes["shared-cache"] == {
        "name": "shared-cache",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    assert mounts["shared-cache"] == {
        "name": "shared-cache", "mountPath": "/shared-cache", "readOnly": True,
    }  # fmt: skip
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    paths = b.trainer_config(job, 1, None, None, SETTINGS)["paths"]
    assert paths["shared_model_cache"] == "/shared-cache" and paths["model_cache"] == "/cache"

"""The operator's rendered trainer configs are valid for the trainer's own config model
(docs/contract.md section 1), so neither side can drift from the contract silently."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import builders, planner
from finetune_operator import models as m
from finetune_operator.settings import Settings

config = pytest.importorskip("finetune_trainer.config")

SPECS: list[dict[str, Any]] = [
    {   # tiny CPU job: model and data on PVCs
        "model": {"pvc": "models", "path": "tiny"}, "dataset": {"pvc": "data", "path": "t.jsonl"},
        "training": {"maxSteps": 10}, "resources": {"gpus": 0}, "output": {"size": "1Gi"},
    },
    {   # QLoRA from the hub with a token, inline data, every training knob set
        "model": {"name": "mistralai/Mistral-7B-v0.1", "revision": "main", "trustRemoteCode": True},
        "dataset": {"configMap": {"name": "cm"}, "format": "prompt-completion",
                    "fields": {"prompt": "q"}, "validationSplit": 0.1},
        "method": "qlora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "targetModules": ["q_proj"]},
        "training": {"epochs": 1.5, "learningRate": 1e-4, "batchSize": 32, "microBatchSize": 4,
                     "maxSeqLength": 4096, "warmupSteps": 10, "warmupRatio": 0.1,
                     "scheduler": "cosine", "optimizer": "paged_adamw_8bit", "weightDecay": 0.01,
                     "seed": 7, "precision": "bf16", "packing": False,
                     "gradientCheckpointing": False},
        "resources": {"gpus": 2, "gpuMemoryMiB": 12288},
        "checkpoint": {"everySteps": 10, "keep": 1},
        "output": {"pvc": "out", "mergeAdapter": True}, "backend": "unsloth",
        "hubTokenSecretRef": {"name": "hf", "key": "tok"},
    },
    {   # full fine-tune, hub dataset
        "model": {"name": "Qwen/Qwen2.5-0.5B"}, "dataset": {"hub": "org/d", "split": "train_sft",
                                                          "format": "messages"},
        "method": "full", "training": {"maxSteps": 100, "batchSize": 8},
        "resources": {"gpus": 1}, "output": {"pvc": "out"},
    },
    {   # URL dataset, text format
        "model": {"name": "org/m"}, "dataset": {"url": "https://x/t.jsonl", "format": "text"},
        "training": {"epochs": 3}, "output": {"pvc": "out"},
    },
    {   # presigned URL dataset with a checksum and its own size cap
        "model": {"name": "org/m"},
        "dataset": {"url": "https://x/t.jsonl?X-Amz-Signature=s", "sha256": "0f" * 32,
                    "maxBytes": 2**20},
        "training": {"maxSteps": 5}, "output": {"pvc": "out"},
    },
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("batch", [None, planner.BatchPlan(2, 8)])
def test_rendered_config_is_valid_for_the_trainer(
    spec: dict[str, Any], batch: planner.BatchPlan | None
) -> None:
    job = m.parse_job({"metadata": {"name": "bot", "namespace": "ml", "uid": "u"}, "spec": spec})
    settings = Settings(api_server="https://10.0.0.1:6443")
    rendered = builders.trainer_config(job, 3, batch, 12288, settings)
    parsed = config.parse_config(rendered)
    assert parsed.version == config.CONTRACT_VERSION
    assert parsed.job.attempt == 3
    assert parsed.progress.config_map == "bot-progress"
    assert parsed.gpus == job.spec.resources.gpus
    assert parsed.model_dump(mode="json") == rendered


def test_every_trainer_exit_code_has_the_operators_reason() -> None:
    """docs/contract.md section 4: each explained failure's exit code maps to the reason the
    trainer writes, and the operator retries exactly the transient ones."""
    errors = pytest.importorskip("finetune_trainer.errors")
    base = errors.TrainerError
    found = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, base)]
    classes = [c for c in found if c is not base]
    assert len(classes) >= 8
    for cls in classes:
        if cls.exit_code == errors.EXIT_SUSPENDED:
            assert m.EXIT_CODE_REASONS[cls.exit_code] == m.Reason.PREEMPTED
            continue
        assert m.EXIT_CODE_REASONS[cls.exit_code] == cls.reason, cls.__name__
    assert m.Reason.SOURCE_UNAVAILABLE in m.Reason.RETRIABLE
    assert m.Reason.DISK_FULL in m.Reason.NOT_RETRIABLE

"""The operator's rendered trainer configs are valid for the trainer's own config model
(docs/contract.md section 1), so neither side can drift from the contract silently."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from finetune_operator import builders, planner
from finetune_operator import lifecycle as lc
from finetune_operator import models as m
from finetune_operator.cli import volumelogs
from finetune_operator.settings import Settings
from finetune_trainer import config, errors, podlog
from finetune_trainer.main import make_parser

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
    {   # held-out fraction, periodic eval and prompts
        "model": {"name": "org/m"}, "dataset": {"url": "https://x/t.jsonl"},
        "evaluation": {"fraction": 0.2, "everySteps": 4, "prompts": ["Say hi"],
                       "maxNewTokens": 16},
        "training": {"maxSteps": 5}, "output": {"pvc": "out"},
    },
    {   # a separate evaluation file next to the training data
        "model": {"name": "org/m"}, "dataset": {"pvc": "data", "path": "t.jsonl"},
        "evaluation": {"dataset": {"path": "eval.jsonl"}},
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


def test_report_keys_match() -> None:
    """docs/contract.md section 3: the ConfigMap keys the trainer writes are the ones read."""
    progress = pytest.importorskip("finetune_trainer.progress")
    assert (builders.PROGRESS_KEY, builders.PREPARE_KEY) == (
        progress.PROGRESS_KEY,
        progress.PREPARE_KEY,
    )


def test_the_trainers_progress_report_parses_into_the_typed_report(tmp_path: Path) -> None:
    """Every field of ProgressReport is one the trainer writes, and a real report parses whole,
    with the resume details (a damaged newest checkpoint set aside) mirrored into the status."""
    callbacks = pytest.importorskip("finetune_trainer.callbacks")
    progress = pytest.importorskip("finetune_trainer.progress")
    checkpoints = pytest.importorskip("finetune_trainer.checkpoints")
    root = tmp_path / "checkpoints"
    for step, state_json in ((2, "{}"), (4, "{truncated")):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}/trainer_state.json").write_text(state_json)
        (root / f"checkpoint-{step}" / checkpoints.MARKER).write_text("{}")
    resume = checkpoints.usable(root)  # what train.run reports when it resumes
    cb = callbacks.ProgressCallback(None, 2, cuda=False)
    cb.loss, cb.learning_rate = 1.25, 1e-4
    cb.checkpoint = {"step": 4, "path": "checkpoints/checkpoint-4", "time": progress.now_iso()}
    cb.extra.update(
        resumed_from=f"checkpoints/{resume.path.name}" if resume.path else None,
        skipped_checkpoints=resume.skipped,
        checkpoint_save_seconds=1.8,
        checkpoint_bytes=4096,
    )
    cb._t0 = time.monotonic() - 10
    state = SimpleNamespace(global_step=5, max_steps=10, epoch=0.5, num_input_tokens_seen=4096)
    written = {**cb.snapshot(state, "running"), "time": progress.now_iso()}  # what put() adds
    # the operator reads every key but the trainer's own timing
    assert set(lc.ProgressReport.model_fields) == set(written) - lc.reports.IGNORED_PROGRESS_KEYS
    report = lc.parse_progress(json.dumps(written))
    assert report is not None and report.resumed_from == "checkpoints/checkpoint-2"
    mirrored = lc.merge_progress(None, report, 2, 10, datetime.now(UTC))
    assert mirrored is not None and mirrored.resumed_from == "checkpoints/checkpoint-2"
    assert [s.path for s in mirrored.skipped_checkpoints or []] == ["checkpoints/checkpoint-4"]
    # status.checkpoint never keeps pointing at the damaged one
    old = m.CheckpointStatus(step=4, path="checkpoints/checkpoint-4")
    kept = lc.merge_checkpoint(old, report.model_copy(update={"checkpoint": None}))
    assert kept == m.CheckpointStatus(step=2, path="checkpoints/checkpoint-2")
    [(kind, reason, message)] = lc.transition_events(
        m.FineTuneJobStatus(), m.FineTuneJobStatus(progress=mirrored)
    )
    assert (kind, reason) == ("Warning", m.Reason.CHECKPOINT_SKIPPED)
    assert (
        "checkpoint-4 is damaged" in message and "resumed from checkpoints/checkpoint-2" in message
    )
    report = lc.parse_progress(json.dumps(written))
    assert report is not None
    assert (report.attempt, report.step, report.total_steps, report.state) == (2, 5, 10, "running")
    assert report.loss == 1.25 and report.tokens_per_second and report.eta_seconds == 10
    assert report.checkpoint is not None and report.checkpoint.step == 4
    assert report.time is not None


def test_the_prepare_report_parses_the_trainers_plan_and_errors() -> None:
    planner_t = pytest.importorskip("finetune_trainer.planner")
    errors = pytest.importorskip("finetune_trainer.errors")
    assert set(lc.reports.PlanReport.model_fields) <= set(planner_t.Plan.__dataclass_fields__)
    plan = planner_t.Plan(
        fits=True, strategy="single", processes=1, micro_batch_size=4, gradient_accumulation=2,
        estimated_gpu_memory_mib=9000, gpu_memory_mib=12288, parameters=10**9,
        trainable_parameters=10**6, message="fits", breakdown_mib={"weights": 2000},
    )  # fmt: skip
    exc = errors.DataError("t.jsonl row 3: no output")
    for ok, error in ((True, None), (False, {"reason": exc.reason, "message": str(exc)})):
        written = {"ok": ok, "data": {"records": 200, "tokens": 5120, "truncated": 0},
                   "plan": plan.to_json(), "total_steps": 50, "error": error}  # fmt: skip
        report = lc.parse_prepare(json.dumps(written))
        assert report is not None and report.ok is ok
        assert report.plan is not None and report.plan.micro_batch_size == 4
        assert report.data is not None and report.data.records == 200
        if error:
            assert report.error is not None and report.error.reason == m.Reason.BAD_DATA


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[1, 2]", '{"attempt": "x", "step": 3}', '{"step": 3}', '{"attempt": 1}'],
)
def test_a_progress_report_without_attempt_and_step_is_ignored(text: str) -> None:
    report = lc.parse_progress(text)
    assert report is None or report.attempt is None or report.step is None
    assert lc.merge_progress(None, report, 1, 10, datetime.now(UTC)) is None


def test_absurd_fields_are_dropped_one_by_one() -> None:
    text = (
        '{"attempt": 1, "step": 3, "loss": NaN, "eta_seconds": -5, "epoch": true, "checkpoint": 7}'
    )
    report = lc.parse_progress(text)
    assert report is not None and (report.attempt, report.step) == (1, 3)
    assert (report.loss, report.eta_seconds, report.epoch, report.checkpoint) == (None,) * 4
    listed = lc.parse_progress(
        '{"attempt": 1, "step": 3, "resumed_from": "", '
        '"skipped_checkpoints": [7, {"error": "no path"}, {"path": "c/checkpoint-2", "error": 5}]}'
    )
    assert listed is not None and listed.resumed_from is None
    assert listed.skipped_checkpoints == [m.SkippedCheckpoint(path="c/checkpoint-2", error="5")]


def test_exit_code_table() -> None:
    """docs/contract.md section 4, as a table: every code the operator knows, and its retry."""
    retried = {code: reason in m.Reason.RETRIABLE for code, reason in m.EXIT_CODE_REASONS.items()}
    assert retried == {
        2: False,
        3: False,
        4: False,
        5: False,
        6: False,
        7: True,
        8: False,
        9: False,  # ExportFailed: not retried; the trained adapter is kept
        12: True,
        10: True,
        11: True,
    }


def test_the_pod_log_files_the_trainer_writes_are_the_ones_the_plugin_reads(
    tmp_path: Path,
) -> None:
    """Pod log files (docs/contract.md section 2): the env the operator sets is the one the
    trainer reads, the plugin's directory is the trainer's, its command parses, its parser reads
    what the trainer prints."""
    assert builders.POD_NAME_ENV == podlog.POD_ENV
    body = {
        "metadata": {"name": "bot", "namespace": "ml", "uid": "u-1"},
        "spec": SPECS[0],
        "status": {"run": 3},
    }
    where = volumelogs.locate(body)
    assert where is not None
    trainer_dir = podlog.log_dir(Path(builders.work_dir(3)), "u-1")
    assert where.directory == str(trainer_dir) == "/workspace/runs/3/logs/u-1"
    command = volumelogs.read_command(where, ["bot-1", "bot-2"], 4096)
    assert command[0] == "finetune-trainer"
    args = make_parser().parse_args(command[1:])
    assert (args.command, args.dir, args.max_bytes, args.pods) == (
        "read-logs", trainer_dir, 4096, ["bot-1", "bot-2"]
    )  # fmt: skip
    (tmp_path / "bot-1.log.1").write_text("older\n")
    (tmp_path / "bot-1.log").write_text("newer ✓\n")
    printed = "\n".join(podlog.read(tmp_path, ["bot-1", "bot-2"], None))
    found = volumelogs.parse(printed, ["bot-1", "bot-2"])
    assert found["bot-1"] == volumelogs.Found("older\nnewer ✓\n")
    assert found["bot-2"].text == "" and found["bot-2"].problem

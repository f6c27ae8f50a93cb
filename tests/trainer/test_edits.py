"""A learning rate edited while a job is suspended takes effect from the resume step on."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import (
    base_config,
    progress_reports,
    run_trainer,
    start_trainer,
    write_config,
)


def test_rebase_keeps_the_schedule_shape_and_moves_its_peak() -> None:
    import torch
    from transformers import get_scheduler

    from finetune_trainer.edits import rebase_learning_rate

    def make(lr: float) -> tuple[Any, Any]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
        return opt, get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=20)

    old_opt, old = make(3e-3)
    new_opt, new = make(1e-4)
    for _ in range(7):
        old_opt.step(), old.step()
        new_opt.step(), new.step()
    assert rebase_learning_rate(old, old_opt, 1e-4) == pytest.approx(3e-3)
    for _ in range(5):
        assert old.get_last_lr() == pytest.approx(new.get_last_lr())
        old_opt.step(), old.step()
        new_opt.step(), new.step()
    assert rebase_learning_rate(new, new_opt, 1e-4) is None  # unchanged: nothing to do


def test_describe_names_each_changed_hyperparameter_with_the_resume_step() -> None:
    from finetune_trainer.edits import describe

    before = {"learningRate": 0.003, "maxSteps": 400, "microBatchSize": 4,
              "gradientAccumulation": 1, "weightDecay": 0.0}  # fmt: skip
    after = {**before, "learningRate": 0.0001, "maxSteps": 600, "microBatchSize": 2,
             "gradientAccumulation": 2, "scheduler": "cosine"}  # fmt: skip
    assert describe(before, after, 14) == [
        "learningRate 0.003 → 0.0001 from step 14",
        "maxSteps 400 → 600 from step 14",
        "microBatchSize 4 → 2 from step 14",
        "gradientAccumulation 1 → 2 from step 14",
    ]  # scheduler: not recorded by the checkpoint, so not compared
    assert describe(before, dict(before), 14) == []


def _suspend_after(work: Path, cfg: Path, step: int) -> int:
    """Run the trainer until it reports ``step``, SIGTERM it (a suspend); the step it stopped at."""
    proc = start_trainer("train", cfg, work)
    deadline = time.monotonic() + 180
    while progress_reports(work).get("progress.json", {}).get("step", 0) < step:
        assert proc.poll() is None and time.monotonic() < deadline, (work / "train.log").read_text()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 10
    stopped: int = progress_reports(work)["progress.json"]["step"]
    return stopped


def _summary(work: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((work / "output" / "summary.json").read_text())
    return loaded


@pytest.mark.slow
def test_learning_rate_edited_while_suspended_is_followed_from_the_resume_step(
    tmp_path: Path, tiny_model: Path
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(160, seed=4))

    def config(work: Path, lr: float) -> Path:
        return write_config(
            tmp_path / f"{work.name}.json",
            base_config(
                work, tiny_model, data,
                training={"max_steps": 30, "batch_size": 4, "learning_rate": lr,
                          "warmup_steps": 3},
                checkpoint={"every_steps": 50, "keep": 2},
            ),
        )  # fmt: skip

    straight = tmp_path / "straight"
    assert run_trainer("train", config(straight, 1e-3), straight) == 0

    work = tmp_path / "edited"
    cfg = config(work, 1e-2)
    stop = _suspend_after(work, cfg, 8)
    config(work, 1e-3)  # the edit made while suspended
    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]

    edited = _summary(work)
    assert edited["edits"] == [f"learningRate 0.01 → 0.001 from step {stop}"]
    assert progress_reports(work)["progress.json"]["edits"] == edited["edits"]
    want = {e["step"]: e["learning_rate"] for e in _summary(straight)["learning_rates"]}
    got = {e["step"]: e["learning_rate"] for e in edited["learning_rates"]}
    assert set(got) == set(range(1, 31))
    for step in range(1, stop + 1):  # before the stop: the old schedule (10x the new one)
        assert got[step] == pytest.approx(10 * want[step], rel=1e-6), step
    for step in range(stop + 1, 31):  # after: exactly the schedule of a run made with 1e-3
        assert got[step] == pytest.approx(want[step], rel=1e-6), step


@pytest.mark.slow
def test_max_steps_and_micro_batch_edited_while_suspended_reshape_the_run(
    tmp_path: Path, tiny_model: Path
) -> None:
    """maxSteps 30 -> 40 extends the schedule (the lr after the resume is a 40-step run's), and
    microBatchSize 4 -> 2 doubles the accumulation so the effective batch stays 4; both are
    recorded with the resume step."""
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(160, seed=5))

    def config(work: Path, steps: int, micro: int) -> Path:
        return write_config(
            tmp_path / f"{work.name}.json",
            base_config(
                work, tiny_model, data,
                training={"max_steps": steps, "batch_size": 4, "micro_batch_size": micro,
                          "learning_rate": 1e-3, "warmup_steps": 2},
                checkpoint={"every_steps": 50, "keep": 2},
            ),
        )  # fmt: skip

    straight = tmp_path / "straight"
    assert run_trainer("train", config(straight, 40, 4), straight) == 0

    work = tmp_path / "edited"
    cfg = config(work, 30, 4)
    stop = _suspend_after(work, cfg, 6)
    config(work, 40, 2)
    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]

    edited = _summary(work)
    assert edited["edits"] == [
        f"maxSteps 30 → 40 from step {stop}",
        f"microBatchSize 4 → 2 from step {stop}",
        f"gradientAccumulation 1 → 2 from step {stop}",
    ]
    assert edited["steps"] == edited["total_steps"] == 40
    assert edited["plan"]["micro_batch_size"] * edited["plan"]["gradient_accumulation"] == 4
    want = {e["step"]: e["learning_rate"] for e in _summary(straight)["learning_rates"]}
    got = {e["step"]: e["learning_rate"] for e in edited["learning_rates"]}
    for step in range(stop + 1, 41):  # after the resume: the schedule of a 40-step run
        assert got[step] == pytest.approx(want[step], rel=1e-6), step
    assert got[stop] != pytest.approx(want[stop], rel=1e-6)  # before: the 30-step one

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
    proc = start_trainer("train", cfg, work)
    deadline = time.monotonic() + 180
    while progress_reports(work).get("progress.json", {}).get("step", 0) < 8:
        assert proc.poll() is None and time.monotonic() < deadline, (work / "train.log").read_text()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 10
    stop = progress_reports(work)["progress.json"]["step"]
    config(work, 1e-3)  # the edit made while suspended
    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]

    edited = _summary(work)
    assert edited["edits"] == [f"learningRate 0.01 -> 0.001 from step {stop}"]
    assert progress_reports(work)["progress.json"]["edits"] == edited["edits"]
    want = {e["step"]: e["learning_rate"] for e in _summary(straight)["learning_rates"]}
    got = {e["step"]: e["learning_rate"] for e in edited["learning_rates"]}
    assert set(got) == set(range(1, 31))
    for step in range(1, stop + 1):  # before the stop: the old schedule (10x the new one)
        assert got[step] == pytest.approx(10 * want[step], rel=1e-6), step
    for step in range(stop + 1, 31):  # after: exactly the schedule of a run made with 1e-3
        assert got[step] == pytest.approx(want[step], rel=1e-6), step

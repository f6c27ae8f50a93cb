"""COMPLETE markers, the newest complete checkpoint, retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer import checkpoints


def make(root: Path, step: int, done: bool) -> Path:
    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "model.safetensors").write_text("w")
    if done:
        checkpoints.write_marker(p, {"step": step})
    return p


def test_unmarked_checkpoint_is_never_chosen(tmp_path: Path) -> None:
    make(tmp_path, 10, True)
    make(tmp_path, 20, True)
    make(tmp_path, 30, False)  # cut short while saving
    (tmp_path / "checkpoint-x").mkdir()
    assert checkpoints.newest_complete(tmp_path) == tmp_path / "checkpoint-20"
    assert [s for s, _ in checkpoints.complete(tmp_path)] == [10, 20]
    checkpoints.remove_incomplete(tmp_path)
    assert not (tmp_path / "checkpoint-30").exists()
    assert checkpoints.newest_complete(tmp_path / "missing") is None


def test_rotate_keeps_newest_complete(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        make(tmp_path, step, True)
    make(tmp_path, 12, False)
    make(tmp_path, 25, False)  # newer than every complete one: may be in progress, kept
    checkpoints.rotate(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint-15", "checkpoint-20", "checkpoint-25"]


def real(root: Path, step: int) -> Path:
    """A complete checkpoint with the file kinds HF writes (json, safetensors, torch zip)."""
    import torch
    from safetensors.torch import save_file

    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.ones(64)}, str(p / "adapter_model.safetensors"))
    torch.save({"state": torch.zeros(256)}, p / "optimizer.pt")
    checkpoints.write_marker(p, {"step": step})
    return p


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        real(tmp_path, step)
    assert checkpoints.verify(tmp_path / "checkpoint-30") is None
    opt = tmp_path / "checkpoint-30" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:300])  # cut short behind the marker's back
    st = tmp_path / "checkpoint-20" / "adapter_model.safetensors"
    st.write_bytes(st.read_bytes()[:-10])
    resume = checkpoints.usable(tmp_path)
    assert resume.path == tmp_path / "checkpoint-10"
    assert [s["path"] for s in resume.skipped] == [
        f"{tmp_path.name}/checkpoint-30",
        f"{tmp_path.name}/checkpoint-20",
    ]
    assert "optimizer.pt: truncated archive" in resume.skipped[0]["error"]
    assert "adapter_model.safetensors" in resume.skipped[1]["error"]
    assert (tmp_path / "checkpoint-30.corrupt").is_dir()  # kept for inspection
    assert checkpoints.newest_complete(tmp_path) == tmp_path / "checkpoint-10"
    real(tmp_path, 40)
    checkpoints.rotate(tmp_path, keep=3)  # a newer complete one: the damaged ones go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-40"]


def test_missing_trainer_state_is_damage(tmp_path: Path) -> None:
    p = make(tmp_path, 5, True)
    assert checkpoints.verify(p) == "trainer_state.json is missing"


@pytest.mark.parametrize(
    ("steps", "keep", "evals", "kept"),
    [
        ([10, 20, 30, 40], 2, {}, {30, 40}),  # no evaluation: the newest only
        ([10, 20, 30, 40], 2, {10: 0.5, 20: 0.9, 30: 1.0, 40: 1.1}, {10, 30, 40}),  # best is older
        ([10, 20, 30, 40], 2, {10: 0.9, 40: 0.5}, {30, 40}),  # best is among the newest
        ([10, 20, 30], 1, {10: 0.7, 20: 0.7}, {10, 30}),  # a tie: the earlier one
        ([10, 20, 30], 1, {5: 0.1, 15: 0.2}, {30}),  # evaluated steps without a checkpoint
        ([10, 20], 5, {10: 0.1}, {10, 20}),
        ([], 2, {10: 0.1}, set()),
    ],
)
def test_kept_steps_newest_and_best(
    steps: list[int], keep: int, evals: dict[int, float], kept: set[int]
) -> None:
    assert checkpoints.kept_steps(steps, keep, evals) == kept


def test_rotate_keeps_the_best_evaluated_checkpoint(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        make(tmp_path, step, True)
    evals = {10: 1.0, 20: 0.4, 30: 0.8}
    checkpoints.rotate(tmp_path, keep=1, evals=evals)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-30"]
    make(tmp_path, 40, True)  # later saves: the best stays while it is the best
    checkpoints.rotate(tmp_path, keep=1, evals={**evals, 40: 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "checkpoint-40"]
    make(tmp_path, 50, True)  # a better one: the old best is an ordinary old checkpoint now
    checkpoints.rotate(tmp_path, keep=1, evals={**evals, 40: 0.5, 50: 0.3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-50"]


def test_eval_losses_from_hf_log_history(tmp_path: Path) -> None:
    history = [
        {"step": 5, "loss": 2.0},
        {"step": 5, "eval_loss": 1.5},
        {"step": 10, "eval_loss": 1.25, "eval_runtime": 0.1},
        {"eval_loss": 9.0},  # no step: ignored
    ]
    assert checkpoints.eval_losses(history) == {5: 1.5, 10: 1.25}
    p = make(tmp_path, 10, True)
    (p / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert checkpoints.recorded_eval_losses(p) == {5: 1.5, 10: 1.25}
    (p / "trainer_state.json").write_text("{cut sh")
    assert checkpoints.recorded_eval_losses(p) == {}
    assert checkpoints.recorded_eval_losses(None) == {}
    assert checkpoints.recorded_eval_losses(tmp_path / "missing") == {}


def test_retention_at_start_keeps_the_best_named_by_the_newest_checkpoint(tmp_path: Path) -> None:
    """A resume with a lowered ``keep``: the eval history comes from the newest checkpoint's
    trainer_state.json, and the best evaluated checkpoint survives the rotation."""
    from finetune_trainer import retention

    root = tmp_path / "checkpoints"
    history = [{"step": s, "eval_loss": loss} for s, loss in ((10, 0.9), (20, 0.3), (30, 0.6))]
    for step in (10, 20, 30, 40):
        p = real(root, step)
        state = {"global_step": step, "log_history": [h for h in history if h["step"] <= step]}
        (p / "trainer_state.json").write_text(json.dumps(state))
    resume = retention.at_start(tmp_path, keep=1)
    assert resume.path == root / "checkpoint-40"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-20", "checkpoint-40"]

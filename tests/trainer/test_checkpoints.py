"""COMPLETE markers, the newest complete checkpoint, retention."""

from __future__ import annotations

from pathlib import Path

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

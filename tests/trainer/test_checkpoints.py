"""COMPLETE markers, the newest complete checkpoint, retention."""

from __future__ import annotations

import json
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

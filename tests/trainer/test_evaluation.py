"""Held-out evaluation data (a fraction, or a separate file) and the results of a finished run:
the split is deterministic and never shares a row with training; ``latest`` moves atomically."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from finetune_trainer import main as cli
from finetune_trainer import prepare, results
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import base_config, write_config
from tests.trainer.test_prepare import env  # noqa: F401  (fixture)


def test_held_out_rows_are_drawn_by_the_seed_and_leave_one_to_train() -> None:
    train, held = prepare.held_out(100, 0.2, seed=7)
    assert (
        len(held) == 20 and not set(train) & set(held) and sorted(train + held) == list(range(100))
    )
    assert prepare.held_out(100, 0.2, seed=7) == (train, held)  # the same rows every time
    assert prepare.held_out(100, 0.2, seed=8)[1] != held
    assert prepare.held_out(3, 0.5, seed=1)[0] != [] and prepare.held_out(1, 0.5, seed=1)[1] == []


def test_evaluation_rows_identical_to_training_rows_are_dropped() -> None:
    train_ids = [[1, 2], [3, 4], [5]]
    kept, dropped = prepare.without_leaks(train_ids, [0, 1], [[3, 4], [5], [6]], [0, 1, 2])
    assert (kept, dropped) == ([1, 2], 1)  # [5] is row 2 of the data, but not trained on


def _splits(work: Path) -> tuple[set[tuple[int, ...]], list[tuple[int, ...]]]:
    result = json.loads((work / "prepare-result.json").read_text())
    loaded = prepare.load_prepared(work / result["prepared_path"])
    train = {tuple(r) for r in loaded["train"]["input_ids"]}
    return train, [tuple(r) for r in loaded["validation"]["input_ids"]]


def test_a_separate_evaluation_file_is_held_out_without_overlap(
    tmp_path: Path,
    env: Path,  # noqa: F811
    tiny_model: Path,
) -> None:
    rows = synthetic_records(60, seed=1)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    extra = [r for r in synthetic_records(12, seed=2) if r not in rows]
    evaluation = write_jsonl(tmp_path / "eval.jsonl", extra + rows[:3])  # 3 leaked rows
    ev = {"dataset": {"path": str(evaluation), "format": "alpaca"}}
    cfg = base_config(env, tiny_model, data, evaluation=ev)
    assert cli.main(["prepare", "--config", str(write_config(tmp_path / "c.json", cfg))]) == 0
    result = json.loads((env / "prepare-result.json").read_text())
    assert result["data"]["train_records"] == 60  # all of the training file is trained on
    assert result["data"]["validation_records"] == len(extra)
    train, held = _splits(env)
    assert len(held) == len(extra) and not train & set(held)

    # a fraction of a file with duplicated records: no held-out row is also a training row
    dup = write_jsonl(tmp_path / "dup.jsonl", rows + rows[:20])
    work = tmp_path / "dup-work"
    cfg = base_config(work, tiny_model, dup, dataset={"validation_split": 0.25})
    assert cli.main(["prepare", "--config", str(write_config(tmp_path / "d.json", cfg))]) == 0
    manifest_drop = json.loads((work / "prepare-result.json").read_text())["data"]
    train, held = _splits(work)
    assert not train & set(held)
    assert manifest_drop["validation_records"] == len(held) < 20


def test_latest_points_at_the_newest_run_and_is_replaced_in_one_rename(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    first = root / "output"
    first.mkdir(parents=True)
    assert results.point_latest(root, first) == root / "latest"
    assert os.readlink(root / "latest") == "output"
    run2 = root / "runs" / "2"
    (run2 / "output" / "adapter").mkdir(parents=True)
    results.point_latest(run2, run2 / "output")
    assert os.readlink(root / "latest") == os.path.join("runs", "2", "output")  # relative
    assert (root / "latest" / "adapter").is_dir()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "output", "runs"]  # no temp left


@pytest.mark.parametrize(
    ("evals", "kept", "want"),
    [
        ({}, [10], (None, None)),
        ({5: 0.9, 10: 0.7, 15: 0.8, 20: 0.75}, [15, 20], (0.7, 20)),  # 10 was rotated away
        ({10: 0.7, 20: 0.7}, [10, 20], (0.7, 10)),  # a tie: the earlier one
        ({5: 0.5}, [10], (0.5, None)),  # no kept checkpoint was evaluated
    ],
)
def test_best_checkpoint_is_the_kept_one_evaluated_lowest(
    evals: dict[int, float], kept: list[int], want: tuple[float | None, int | None]
) -> None:
    assert results.best_eval(evals, kept) == want


def test_a_volume_without_symlinks_only_costs_the_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "output").mkdir()

    def refuse(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refuse)
    assert results.try_point_latest(tmp_path, tmp_path / "output") is None
    assert not (tmp_path / "latest").exists()

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "symlink", full)
    with pytest.raises(OSError, match="No space"):
        results.try_point_latest(tmp_path, tmp_path / "output")

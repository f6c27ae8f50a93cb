"""A loss that is no longer a number ends the run with exit 8 (Diverged), nothing published."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from finetune_trainer import divergence
from finetune_trainer.errors import DivergedError
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import base_config, run_trainer, write_config


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan"])
@pytest.mark.parametrize("key", ["loss", "eval_loss"])
def test_a_non_finite_loss_is_named_with_step_rate_and_checkpoint(key: str, value: object) -> None:
    with pytest.raises(DivergedError) as raised:
        divergence.check({key: value, "epoch": 1.0}, 14, 0.02, "checkpoints/checkpoint-10")
    message = str(raised.value)
    assert f"{key} became" in message and "at step 14" in message
    assert "learning rate 0.02" in message and "checkpoints/checkpoint-10" in message


def test_a_non_finite_gradient_norm_is_divergence_too() -> None:
    with pytest.raises(DivergedError, match="grad_norm became nan at step 3"):
        divergence.check({"loss": 2.5, "grad_norm": math.nan}, 3, None, None)


def test_finite_losses_and_other_keys_pass() -> None:
    divergence.check({"loss": 1e30, "eval_loss": 0.0, "epoch": math.nan}, 3, None, None)
    divergence.check({}, 0, None, None)


def _poisoned_copy(model: Path, dest: Path) -> Path:
    """The tiny model with one infinite weight (what a corrupt shard or an fp16 overflow leaves):
    every forward pass from step 1 on gives a NaN loss, whatever the learning rate."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model, dest)
    shard = dest / "model.safetensors"
    tensors = load_file(str(shard))
    name = next(k for k in tensors if k.endswith("mlp.down_proj.weight"))
    tensors[name][0, 0] = float("inf")
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return dest


@pytest.mark.slow
def test_a_run_whose_loss_is_nan_exits_8_and_publishes_no_output(
    tmp_path: Path, tiny_model: Path
) -> None:
    work = tmp_path / "work"
    model = _poisoned_copy(tiny_model, tmp_path / "poisoned")
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(64, seed=0))
    cfg = write_config(
        tmp_path / "config.json",
        base_config(work, model, data, training={"epochs": 2, "batch_size": 4, "warmup_steps": 0}),
    )
    assert run_trainer("prepare", cfg, work) == 0, (work / "prepare.log").read_text()[-2000:]
    code = run_trainer("train", cfg, work)
    log = (work / "train.log").read_text()
    assert code == 8, log[-3000:]
    message = (work / "termination-log").read_text()
    assert message.startswith("Diverged: loss became nan at step 1 ("), message
    assert "no checkpoint was written yet" in message and "learningRate" in message
    assert not (work / "output" / "adapter").exists()  # nothing half-trained where users look

"""A full volume is DiskFull (exit 6), names path and claim, and loses no complete checkpoint.

The real tests mount a small tmpfs (we run as root in the test environment; a machine where the
mount fails fails the test rather than skipping it) and fill it with a ballast file, so the
trainer meets a real ENOSPC in torch's and Arrow's own writers.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer import checkpoints, diskfull
from finetune_trainer.errors import DiskFullError
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import (
    base_config,
    progress_reports,
    run_trainer,
    start_trainer,
    write_config,
)
from tests.trainer.test_train import wait_for_step


def test_enospc_in_any_shape_is_disk_full(tmp_path: Path) -> None:
    plain = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f"))
    full = diskfull.as_disk_full(plain, tmp_path, "claim-a")
    assert isinstance(full, DiskFullError) and full.exit_code == 6
    assert str(tmp_path / "f") in str(full) and "claim claim-a" in str(full)

    try:  # wrapped by a library: found in the chain
        try:
            raise plain
        except OSError as exc:
            raise RuntimeError("save failed") from exc
    except RuntimeError as wrapped:
        assert diskfull.as_disk_full(wrapped, tmp_path, None) is not None

    # torch's zip writer loses the errno: only a (nearly) full volume makes it DiskFull
    torch_msg = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")
    assert diskfull.as_disk_full(torch_msg, tmp_path, None) is None  # tmp has space: a bug
    assert diskfull.as_disk_full(ValueError("x"), tmp_path, None) is None


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of its own."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(volume: Path, leave: int) -> Path:
    """A ballast file taking all but ``leave`` bytes."""
    ballast = volume / "ballast"
    free = diskfull.free_bytes(volume) or 0
    with ballast.open("wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(free - leave, 0))
    return ballast


def test_prepare_on_a_full_volume_is_disk_full(small_volume: Path, tiny_model: Path) -> None:
    data = write_jsonl(small_volume.parent / "train.jsonl", synthetic_records(200, seed=1))
    work = small_volume / "job"
    cfg = write_config(
        small_volume.parent / "c.json",
        base_config(work, tiny_model, data, paths={"claim": "bot-output"}),
    )
    work.mkdir()
    fill(small_volume, 20_000)  # room for the small files, not for the Arrow dataset
    logs = small_volume.parent / "logs"
    code = run_trainer("prepare", cfg, logs)
    message = (logs / "termination-log").read_text()
    assert code == 6, (logs / "prepare.log").read_text()[-3000:]
    assert message.startswith("DiskFull: no space left") and "claim bot-output" in message
    assert progress_reports(logs)["prepare.json"]["error"]["reason"] == "DiskFull"
    assert not list((work / "prepared").glob(".tmp-*")), "the partial dataset was left behind"


def test_checkpoint_on_a_full_volume_keeps_the_last_complete_one(
    small_volume: Path, tiny_model: Path
) -> None:
    data = write_jsonl(small_volume.parent / "train.jsonl", synthetic_records(120, seed=2))
    work = small_volume / "job"
    logs = small_volume.parent / "logs"
    cfg = write_config(
        small_volume.parent / "c.json",
        base_config(
            work,
            tiny_model,
            data,
            training={"max_steps": 12, "batch_size": 4},
            checkpoint={"every_steps": 100, "keep": 3},
            paths={"claim": "bot-output"},
            progress={"config_map": "t-progress", "interval_seconds": 0.001},
        ),
    )
    env_logs = logs  # progress and termination log live off the small volume
    proc = start_trainer("train", cfg, env_logs)
    wait_for_step(env_logs, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 10
    (first,) = checkpoints.complete(work / "checkpoints")
    size = checkpoints.size_of(first[1])

    ballast = fill(small_volume, size // 3)  # the next checkpoint cannot fit
    proc = start_trainer("train", cfg, env_logs)
    wait_for_step(env_logs, first[0] + 1, proc)
    proc.send_signal(signal.SIGTERM)  # the checkpoint of the stop hits ENOSPC
    code = proc.wait(timeout=120)
    log = (env_logs / "train.log").read_text()
    message = (env_logs / "termination-log").read_text()
    assert code == 6, log[-3000:]
    assert message.startswith("DiskFull: no space left on the volume at"), message
    assert "claim bot-output" in message and f"{first[1].name} is complete" in message
    assert "needed" in message
    # the complete checkpoint is intact, the cut-short one is gone
    assert [s for s, _ in checkpoints.complete(work / "checkpoints")] == [first[0]]
    assert checkpoints.verify(first[1]) is None
    left = sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*"))
    assert left == [first[1].name]
    print(f"\n{message}")

    ballast.unlink()  # the claim was enlarged
    assert run_trainer("train", cfg, env_logs) == 0, (env_logs / "train.log").read_text()[-3000:]
    summary = json.loads((work / "output" / "summary.json").read_text())
    assert summary["resumed_from"] == first[1].name and summary["steps"] == 12
    assert [x["step"] for x in summary["losses"]] == list(range(1, 13))

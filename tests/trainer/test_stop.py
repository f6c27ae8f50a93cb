"""stop.py in one process: abort before training, defer in training and critical blocks; the
launcher's exit-code combination; output staging; the retention policy."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from finetune_trainer import files, launch, retention, stop
from finetune_trainer.errors import EXIT_SUSPENDED


def test_before_training_a_signal_stops_at_once(handlers: None) -> None:
    stop.stage("loading")
    with pytest.raises(stop.Interrupted, match="signal 15 during loading"):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):  # the handler runs at the next bytecode boundary
            pass
    assert stop.requested() and stop.signum() == signal.SIGTERM


def test_an_interrupt_swallowed_by_library_code_is_raised_again_at_the_next_stage(
    handlers: None,
) -> None:
    try:  # what a bare ``except:`` in some import chain does to the handler's raise
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):
            pass
    except BaseException:  # the point of the test
        pass
    assert stop.requested()
    with pytest.raises(stop.Interrupted, match="signal 15 during start-up"):
        stop.stage("start-up")


def test_an_interrupt_swallowed_while_the_checkpoint_is_read_stops_before_training(
    handlers: None,
) -> None:
    stop.stage("reading the checkpoint")
    try:  # a finaliser or library ``except`` inside trainer.train(), before on_train_begin
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):
            pass
    except BaseException:  # the point of the test
        pass
    with pytest.raises(stop.Interrupted, match="signal 15 during reading the checkpoint"):
        stop.begin_training()
    assert not stop.training_started()


def test_a_critical_block_finishes_then_stops(handlers: None) -> None:
    done = []
    with pytest.raises(stop.Interrupted), stop.critical("claiming"):
        os.kill(os.getpid(), signal.SIGINT)
        done.append("rest of the block")
    assert done == ["rest of the block"]


def test_in_training_a_signal_only_sets_the_flag(handlers: None) -> None:
    stop.begin_training()
    os.kill(os.getpid(), signal.SIGTERM)
    with stop.critical("the final save"):
        pass
    stop.check()  # no raise: the training loop decides
    assert stop.requested() and stop.training_started()
    assert (stop.seconds_since_request() or 0) >= 0


def test_launcher_counts_a_rank_killed_before_its_handlers_as_suspended() -> None:
    early = -signal.SIGTERM
    assert launch.combine([EXIT_SUSPENDED, early], terminated=True) == EXIT_SUSPENDED
    assert launch.combine([0, early], terminated=False) == early  # not ours: a failure
    assert launch.combine([6, EXIT_SUSPENDED], terminated=True) == 6
    # a peer that stopped before training broke this rank's collective: the same stop
    assert launch.combine([EXIT_SUSPENDED, 1], terminated=True) == EXIT_SUSPENDED
    assert launch.combine([0, 1], terminated=True) == 1  # no rank stopped: a real failure


def test_publish_replaces_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "old").write_text("old")
    staging = files.staging_dir(out)
    (staging / "adapter").mkdir(parents=True)
    (staging / "adapter" / "new").write_text("new")
    files.publish(staging, out)
    assert [p.name for p in (out / "adapter").iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]


def test_retention_prunes_what_can_never_be_resumed(tmp_path: Path) -> None:
    root = tmp_path
    for run in (root, root / "runs" / "1", root / "runs" / "2"):
        for d in ("checkpoints/checkpoint-5", "output/adapter", "downloads"):
            (run / d).mkdir(parents=True)
    (root / "superseded" / "uid-0" / "checkpoints").mkdir(parents=True)
    (root / "superseded" / "uid-0" / "output").mkdir(parents=True)
    (root / "runs" / "2" / "prepared" / ".tmp-abc").mkdir(parents=True)
    work = root / "runs" / "2"
    assert retention.earlier_runs(work) == [root, root / "runs" / "1"]
    retention.at_start(work, keep=2)
    for earlier in (root, root / "runs" / "1"):
        assert not (earlier / "checkpoints").exists() and not (earlier / "downloads").exists()
        assert (earlier / "output" / "adapter").is_dir()  # results stay
    assert not (root / "superseded" / "uid-0" / "checkpoints").exists()
    assert (root / "superseded" / "uid-0" / "output").is_dir()
    assert not (work / "prepared" / ".tmp-abc").exists()
    assert (work / "checkpoints").is_dir() and (work / "downloads").is_dir()  # this run's
    retention.after_success(work)
    assert not (work / "downloads").exists() and (work / "output").is_dir()
    assert retention.earlier_runs(root) == []  # run 0: nothing before it


def test_a_signal_before_the_entrys_try_is_held_then_ends_as_suspended(tmp_path: Path) -> None:
    """install(hold=True) then a SIGTERM at once (the entry module's first lines): nothing is
    raised outside a try; release() inside it raises Interrupted, which the entry turns into 10."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from finetune_trainer import stop\n"
        "stop.install(hold=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('held', flush=True)\n"
        "try:\n"
        "    stop.release()\n"
        "except stop.Interrupted as exc:\n"
        "    print('interrupted:', exc, flush=True)\n"
        "    sys.exit(10)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_SUSPENDED, done.stderr
    assert done.stdout.splitlines()[0] == "held" and "interrupted:" in done.stdout

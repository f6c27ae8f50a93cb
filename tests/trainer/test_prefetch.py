"""prefetch.py: reading the model into the page cache during the imports can neither break nor
hold up a run (issue 12 item 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer import prefetch
from tests.harness.wait import wait_until
from tests.trainer.conftest import base_config, trainer_env, write_config


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    yield
    prefetch.stop()
    if prefetch._thread is not None:
        prefetch._thread.join(timeout=30)
    prefetch._outcome, prefetch._thread = None, None


def _model(tmp_path: Path, sizes: dict[str, int]) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for name, size in sizes.items():
        (d / name).write_bytes(os.urandom(size))
    return d


def _config(tmp_path: Path, model: dict[str, object], cache: Path | None = None) -> Path:
    cfg = tmp_path / "config.json"
    paths = {"work": str(tmp_path), "model_cache": str(cache or tmp_path / "cache")}
    cfg.write_text(json.dumps({"model": model, "paths": paths}))
    return cfg


def _finish() -> prefetch.Outcome:
    assert prefetch._thread is not None and prefetch._outcome is not None
    prefetch._thread.join(timeout=60)
    assert not prefetch._thread.is_alive()
    return prefetch._outcome


def test_command_line_parsing() -> None:
    assert prefetch.command_and_config(["train", "--config", "/c.json"]) == ("train", "/c.json")
    assert prefetch.command_and_config(["--config=/c.json", "prepare"]) == ("prepare", "/c.json")
    assert prefetch.command_and_config(["train", "--config"]) == ("train", None)
    assert prefetch.command_and_config([]) == (None, None)


def test_train_reads_every_shard_in_order(tmp_path: Path) -> None:
    model = _model(tmp_path, {"b.safetensors": 3 * prefetch.CHUNK + 5, "a.safetensors": 7})
    (model / "config.json").write_text("{}")  # not a weight file: not read
    cfg = _config(tmp_path, {"path": str(model)})
    assert prefetch.weight_files([model]) == [model / "a.safetensors", model / "b.safetensors"]
    assert prefetch.start(["train", "--config", str(cfg)]) is not None
    out = _finish()
    assert (out.files, out.bytes_read, out.skipped) == (2, 3 * prefetch.CHUNK + 12, None)
    assert prefetch.summary().startswith("prefetch: 2 files, 0.05 GiB, done in ")


def test_a_hub_model_is_read_from_the_cache_prepare_filled(tmp_path: Path) -> None:
    snap = tmp_path / "cache" / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x" * 100)
    cfg = _config(tmp_path, {"name": "org/m", "path": None})
    prefetch.start(["train", "--config", str(cfg)])
    assert _finish().bytes_read == 100


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["prepare", "--config", "CFG"], {}),  # prepare loads no weights
        (["train", "--config", "CFG"], {"FTO_PREFETCH": "0"}),  # switched off
        (["train"], {}),  # no config: the trainer's own parser reports it
        (["train", "--config", "MISSING"], {}),
        (["train", "--config", "BAD"], {}),
    ],
)
def test_it_does_not_apply_or_fails_quietly(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    model = _model(tmp_path, {"m.safetensors": 10})
    cfg = _config(tmp_path, {"path": str(model)})
    (tmp_path / "bad.json").write_text("{not json")
    bad, missing = str(tmp_path / "bad.json"), str(tmp_path / "nope.json")
    swap = {"CFG": str(cfg), "MISSING": missing, "BAD": bad}
    assert prefetch.start([swap.get(a, a) for a in argv], env) is None
    assert prefetch.summary() == "prefetch: off"


def test_nothing_to_read_is_reported_not_raised(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"path": str(tmp_path / "absent")})
    out = prefetch.start(["train", "--config", str(cfg)], {})
    assert out is not None and out.skipped == "no weight files found"
    cfg = _config(tmp_path, {"name": "org/not-downloaded", "path": None})
    out = prefetch.start(["train", "--config", str(cfg)], {})
    assert out is not None and out.skipped == "no weight files found"


def test_a_model_over_the_budget_is_not_read(tmp_path: Path) -> None:
    model = _model(tmp_path, {"m.safetensors": 4096})
    cfg = _config(tmp_path, {"path": str(model)})
    prefetch.start(["train", "--config", str(cfg)], {"FTO_PREFETCH_MAX_GIB": str(1000 / 2**30)})
    out = _finish()
    assert out.bytes_read == 0 and out.skipped is not None and "> budget" in out.skipped


def test_budget_is_half_of_available_memory_and_bad_values_fall_back() -> None:
    assert prefetch.budget_bytes({}, 10 * 2**30) == 5 * 2**30
    assert prefetch.budget_bytes({"FTO_PREFETCH_MAX_GIB": "1"}, 10 * 2**30) == 2**30
    assert prefetch.budget_bytes({"FTO_PREFETCH_MAX_GIB": "x"}, None) == 64 * 2**30
    assert prefetch.budget_bytes({"FTO_PREFETCH_MAX_GIB": "-3"}, None) == 0


def test_a_read_error_ends_the_thread_quietly(tmp_path: Path) -> None:
    model = _model(tmp_path, {"a.safetensors": 10})
    out = prefetch.Outcome(started=time.monotonic())
    # a shard that vanished between listing and reading
    prefetch.read_into_cache([model / "a.safetensors", model / "b.safetensors"], 2**30, out)
    assert out.skipped is not None and out.skipped.startswith("FileNotFoundError")
    assert out.finished is not None and out.bytes_read == 0


def test_start_returns_while_the_read_is_blocked_and_stop_ends_it(tmp_path: Path) -> None:
    """A volume that hangs cannot hold up the run: start() returns at once (the read blocks only
    the daemon thread), and stop() ends the thread at the next chunk."""
    model = tmp_path / "model"
    model.mkdir()
    fifo = model / "slow.safetensors"
    os.mkfifo(fifo)
    out = prefetch.Outcome(started=time.monotonic())
    t = threading.Thread(target=prefetch.read_into_cache, args=([fifo], 2**30, out), daemon=True)
    t.start()
    assert t.is_alive()  # blocked in open() until a writer comes
    with fifo.open("wb") as w:
        w.write(b"y" * 1000)
        w.flush()
        wait_until(lambda: out.bytes_read == 1000, timeout=10)
        out.stop.set()
    t.join(timeout=10)
    assert not t.is_alive()
    assert out.bytes_read == 1000


def test_sigterm_during_the_imports_still_suspends_with_the_prefetch_running(
    tmp_path: Path,
) -> None:
    """The entry's first statement installs the handlers; the prefetch thread started after it
    does not change that: a SIGTERM during the imports exits 10 (suspended) at once."""
    model = _model(tmp_path, {"m.safetensors": 64 * 2**20})
    work = tmp_path / "work"
    work.mkdir()
    cfg = write_config(tmp_path / "job.json", base_config(work, model, tmp_path / "d.jsonl"))
    env = trainer_env(work)
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", "train", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def caught() -> bool:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        mask = next(x.split()[1] for x in status.splitlines() if x.startswith("SigCgt"))
        both = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        return int(mask, 16) & both == both  # stop.install() has returned

    wait_until(caught, timeout=30, interval=0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 10, out[-2000:]
    assert (work / "termination-log").read_text().startswith("Suspended: signal 15")

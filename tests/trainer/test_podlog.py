"""The pod's log file on the work volume (podlog.py): appended and flushed per line, capped by
rotation, best effort on a full or unusable volume, one writer for a launcher's ranks, and the
``read-logs`` side the plugin runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer import podlog
from finetune_trainer.main import main

ENV = {podlog.POD_ENV: "bot-1", "HOSTNAME": "ignored"}


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (the root logger keeps pytest's handlers); handlers removed after."""
    lg = logging.getLogger("test_podlog")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()


def _decoded(lines: list[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for line in lines:
        rec = json.loads(line)
        texts[rec["pod"]] = texts.get(rec["pod"], "") + rec.get("text", "")
    return texts


def test_pod_name_comes_from_the_downward_api_else_the_hostname() -> None:
    assert podlog.pod_name(ENV) == "bot-1"
    assert podlog.pod_name({"HOSTNAME": "bot-2"}) == "bot-2"
    assert podlog.pod_name({}) == "trainer"
    assert podlog.log_dir(Path("/w"), "u-1") == Path("/w/logs/u-1")
    assert podlog.log_dir(Path("/w"), None) == Path("/w/logs")


def test_attach_appends_and_every_line_is_on_disk_at_once(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "uid" / "bot-1.log"
    path.parent.mkdir(parents=True)
    path.write_text("an earlier run of this pod\n")
    handler = podlog.attach(tmp_path, "uid", ENV)
    assert handler is not None and Path(handler.baseFilename) == path
    try:
        logging.getLogger("finetune_trainer.x").warning("step %d", 7)
        # read while the handler is still open: nothing waits in a buffer
        lines = path.read_text().splitlines()
        assert lines[0] == "an earlier run of this pod"
        assert lines[1].endswith("WARNING finetune_trainer.x: step 7"), lines
        handler.write_line("a rank's line as it came\n")
        assert path.read_text().splitlines()[-1] == "a rank's line as it came"
        assert podlog.current() is handler
    finally:
        podlog.detach()
    assert podlog.current() is None


def test_the_file_is_capped_by_rotating_once(tmp_path: Path, logger: logging.Logger) -> None:
    handler = podlog.PodLogHandler(tmp_path / "bot-1.log", max_bytes=1000)
    logger.addHandler(handler)
    for i in range(200):
        logger.info("line %03d %s", i, "x" * 40)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bot-1.log", "bot-1.log.1"]  # one older generation, never more
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    text = _decoded(list(podlog.read(tmp_path, ["bot-1"], None)))["bot-1"]
    numbers = [int(line.split("line ")[1][:3]) for line in text.splitlines()]
    assert numbers[-1] == 199 and numbers == sorted(numbers)  # oldest part first, in order
    assert len(numbers) == numbers[-1] - numbers[0] + 1  # contiguous: nothing lost between them


def test_a_full_volume_turns_the_file_off_with_one_line_and_never_raises(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = podlog.PodLogHandler(Path("/dev/full"))  # every write: ENOSPC
    logger.addHandler(handler)
    for i in range(3):
        logger.error("record %d", i)
    err = capsys.readouterr().err
    assert err.count("is off from here on") == 1 and "No space left on device" in err, err
    assert "Traceback" not in err
    assert handler.broken is not None and "OSError" in handler.broken
    handler.write_line("relayed\n")  # still silent
    handler.flush()
    assert capsys.readouterr().err == ""


def test_a_volume_without_room_for_the_directory_leaves_the_run_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "logs").write_text("a file where the directory would be")
    with caplog.at_level(logging.WARNING):
        assert podlog.attach(tmp_path, "uid", ENV) is None
    assert "no pod log file" in caplog.text
    assert podlog.current() is None


# two ranks writing half lines as fast as they can: written straight into one file they would
# interleave mid-line; through the relay every line arrives whole
_RANK = """
import sys
for i in range(300):
    sys.stdout.write(f"rank{sys.argv[1]} ")
    sys.stdout.flush()
    sys.stdout.write(f"line {i:03d} end\\n")
    sys.stdout.flush()
"""


def test_the_relay_keeps_ranks_lines_whole_in_one_file(tmp_path: Path) -> None:
    handler = podlog.PodLogHandler(tmp_path / "bot-1.log")
    sink = (tmp_path / "stderr").open("wb")
    procs = [
        subprocess.Popen([sys.executable, "-c", _RANK, str(r)], stdout=subprocess.PIPE)
        for r in (0, 1)
    ]
    threads = [podlog.relay(p.stdout, sink, handler) for p in procs if p.stdout is not None]
    for p, t in zip(procs, threads, strict=True):
        assert p.wait(timeout=60) == 0
        t.join(timeout=10)
        assert not t.is_alive()
    handler.close()
    sink.close()
    for path in (tmp_path / "bot-1.log", tmp_path / "stderr"):
        lines = path.read_text().splitlines()
        assert len(lines) == 600
        for r in (0, 1):
            mine = [line for line in lines if line.startswith(f"rank{r} ")]
            assert mine == [f"rank{r} line {i:03d} end" for i in range(300)]


def test_read_logs_prints_each_pods_files_tail_and_refuses_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bot-1.log.1").write_text("old part\n")
    (tmp_path / "bot-1.log").write_text("new part é\n")
    argv = ["read-logs", "--dir", str(tmp_path), "bot-1", "bot-2", "../etc/passwd"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert _decoded(lines)["bot-1"] == "old part\nnew part é\n"
    assert json.loads(lines[-2]) == {"pod": "bot-2", "missing": True}
    assert json.loads(lines[-1]) == {"pod": "../etc/passwd", "error": "not a pod name"}
    # at most the last N bytes of the pod's files, across the rotation boundary
    cut = list(podlog.read(tmp_path, ["bot-1"], 16))
    assert json.loads(cut[0]) == {"pod": "bot-1", "skipped": 9 + 12 - 16}  # said first
    assert _decoded(cut)["bot-1"] == "art\nnew part é\n"


def test_a_run_in_process_writes_its_failure_to_the_file_and_leaves_no_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"version": 1, "job": {"name": "bot", "uid": "u1"},
                                  "model": {"path": str(tmp_path / "no-model")},
                                  "dataset": {"path": str(tmp_path / "no-data.jsonl")},
                                  "paths": {"work": str(work)}}))  # fmt: skip
    monkeypatch.setenv(podlog.POD_ENV, "bot-prepare")
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("FTO_PROGRESS_FILE", str(tmp_path / "progress.json"))
    code = main(["prepare", "--config", str(config)])
    assert code != 0
    text = (work / "logs" / "u1" / "bot-prepare.log").read_text()
    reason = (tmp_path / "termination-log").read_text().strip()
    assert reason and reason in text  # the run's last word is in the file too
    assert podlog.current() is None

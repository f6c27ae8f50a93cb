"""Work directory ownership: a re-created job of the same name never resumes the old one's run."""

from __future__ import annotations

from pathlib import Path

from finetune_trainer import workdir


def _old_job(work: Path, uid: str | None) -> None:
    (work / "checkpoints" / "checkpoint-80").mkdir(parents=True)
    (work / "checkpoints" / "checkpoint-80" / "COMPLETE").write_text("")
    (work / "output").mkdir()
    (work / "output" / "summary.json").write_text("{}")
    (work / "prepared" / "abc").mkdir(parents=True)
    if uid:
        (work / workdir.OWNER_FILE).write_text(uid + "\n")


def test_a_new_job_moves_the_old_jobs_state_aside_and_keeps_prepared_data(tmp_path: Path) -> None:
    work = tmp_path / "bot"
    work.mkdir()
    _old_job(work, "uid-old")
    moved = workdir.claim(work, "uid-new")
    assert moved == work / "superseded" / "uid-old"
    assert not (work / "checkpoints").exists() and not (work / "output").exists()
    assert (moved / "checkpoints" / "checkpoint-80" / "COMPLETE").exists()  # nothing deleted
    assert (moved / "output" / "summary.json").exists()
    assert (work / "prepared" / "abc").is_dir()  # content-keyed: any job may reuse it
    assert (work / workdir.OWNER_FILE).read_text().strip() == "uid-new"


def test_the_same_job_keeps_its_checkpoints(tmp_path: Path) -> None:
    work = tmp_path / "bot"
    work.mkdir()
    _old_job(work, "uid-1")
    assert workdir.claim(work, "uid-1") is None
    assert (work / "checkpoints" / "checkpoint-80" / "COMPLETE").exists()


def test_state_without_an_owner_is_adopted(tmp_path: Path) -> None:
    work = tmp_path / "bot"
    work.mkdir()
    _old_job(work, None)
    assert workdir.claim(work, "uid-1") is None
    assert (work / "checkpoints" / "checkpoint-80").is_dir()
    assert (work / workdir.OWNER_FILE).read_text().strip() == "uid-1"


def test_without_a_uid_nothing_is_checked(tmp_path: Path) -> None:
    work = tmp_path / "bot"
    work.mkdir()
    _old_job(work, "uid-old")
    assert workdir.claim(work, None) is None
    assert (work / "checkpoints").is_dir()


def test_superseded_twice_keeps_both(tmp_path: Path) -> None:
    work = tmp_path / "bot"
    work.mkdir()
    _old_job(work, "uid-a")
    workdir.claim(work, "uid-b")
    (work / "output").mkdir()
    (work / workdir.OWNER_FILE).write_text("uid-a\n")  # the old job's pod wrote again
    moved = workdir.claim(work, "uid-c")
    assert moved is not None
    assert sorted(p.name for p in moved.iterdir())[:2] == ["checkpoints", "output"]
    assert len([p for p in moved.iterdir() if p.name.startswith("output")]) == 2

"""status.output: the current run's location, what the trainer's final report says is there, the
Succeeded message naming it, and checkpoint paths with the run prefix."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from finetune_operator import lifecycle as lc
from finetune_operator import models as m
from finetune_operator.lifecycle import output as out
from tests.unit.operator.conftest import derive
from tests.unit.operator.test_operator_status import OK_PREPARE, PREPARED

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
FINAL: dict[str, Any] = {
    "attempt": 1,
    "state": "completed",
    "step": 20,
    "total_steps": 20,
    "loss": 0.5,
    "eval_loss": 0.75,
    "checkpoint": {"step": 20, "path": "checkpoints/checkpoint-20"},
    "output": {
        "written": ["adapter", "merged", "samples.jsonl", "summary.json", "../../etc"],
        "summary": {"steps": 20, "tokens": 5120, "train_loss": 0.5, "eval_loss": 0.75,
                    "best_eval_loss": 0.7, "best_checkpoint_step": 10},
        "samples": [{"prompt": "p" * 300, "completion": "c" * 900}, "junk", {"prompt": 3}],
    },
}  # fmt: skip

JobF = Callable[..., m.FineTuneJob]
PodF = Callable[..., dict[str, Any]]


def test_succeeded_run_names_its_output_and_how_it_went(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    new = derive(job, [make_pod("bot-1", phase="Succeeded", exit_code=0)], FINAL, OK_PREPARE, NOW)
    assert new.phase == m.Phase.SUCCEEDED
    o = new.output
    assert o is not None
    claim = job.spec.output.pvc or "bot-output"
    assert (o.claim, o.path, o.latest, o.run, o.ready) == (
        claim, "bot/output", "bot/latest", 0, True
    )  # fmt: skip
    assert (o.adapter, o.merged, o.model, o.gguf) == ("bot/output/adapter", "bot/output/merged",
                                                      None, None)  # fmt: skip
    assert o.samples_file == "bot/output/samples.jsonl"
    assert o.summary == m.OutputSummary(
        steps=20, tokens=5120, train_loss=0.5, eval_loss=0.75, best_eval_loss=0.7,
        best_checkpoint="checkpoints/checkpoint-10",
    )  # fmt: skip
    assert o.samples == [m.SampleGeneration(prompt="p" * 200, completion="c" * 500)]
    assert new.message == (
        f"training finished, eval loss 0.75; adapter in claim {claim} at bot/output "
        "(stable path for the newest run: bot/latest)"
    )
    assert new.progress is not None and new.progress.eval_loss == 0.75
    # the terminal status keeps it (the next reconcile reads no report)
    again = derive(make_job(status=m.dump(new)), [], None, OK_PREPARE, NOW)
    assert again.output == o and again.message == new.message


def test_after_a_restart_output_and_checkpoints_are_the_new_runs(
    make_job: JobF, make_pod: PodF
) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", "run": 2, **PREPARED})
    running = dict(FINAL, state="running", step=12, output=None,
                   checkpoint={"step": 10, "path": "checkpoints/checkpoint-10"})  # fmt: skip
    pods = [make_pod("bot-1", phase="Running", running=True)]
    mid = derive(job, pods, running, OK_PREPARE, NOW)
    assert mid.checkpoint == m.CheckpointStatus(step=10, path="runs/2/checkpoints/checkpoint-10")
    assert mid.output is None  # nothing finished in this run yet
    done = derive(job, [make_pod("bot-1", phase="Succeeded", exit_code=0)], FINAL, OK_PREPARE, NOW)
    assert done.output is not None
    assert (done.output.path, done.output.adapter, done.output.run) == (
        "bot/runs/2/output", "bot/runs/2/output/adapter", 2
    )  # fmt: skip
    assert done.output.summary is not None
    assert done.output.summary.best_checkpoint == "runs/2/checkpoints/checkpoint-10"
    assert "at bot/runs/2/output" in (done.message or "")


def test_a_lost_final_report_still_names_the_location(make_job: JobF, make_pod: PodF) -> None:
    job = make_job(status={"attempt": 1, "phase": "Running", **PREPARED})
    new = derive(job, [make_pod("bot-1", phase="Succeeded", exit_code=0)], None, OK_PREPARE, NOW)
    assert new.output is not None and new.output.ready and new.output.summary is None
    assert new.output.adapter is None and "output in claim" in (new.message or "")


def test_output_report_drops_what_is_not_a_known_name_or_number() -> None:
    report = lc.progress_from({**FINAL, "output": {"written": "adapter", "summary": [1],
                                                    "samples": {"a": 1}}})  # fmt: skip
    assert report is not None and report.output is not None
    assert (report.output.written, report.output.summary, report.output.samples) == (
        None, None, None
    )  # fmt: skip
    bad = lc.progress_from({**FINAL, "output": {"summary": {"eval_loss": float("nan"),
                                                            "steps": -1}}})  # fmt: skip
    assert bad is not None and bad.output is not None and bad.output.summary is not None
    assert (bad.output.summary.eval_loss, bad.output.summary.steps) == (None, None)
    assert out.in_run(0, "checkpoints/x") == "checkpoints/x"
    assert out.in_run(3, "checkpoints/x") == "runs/3/checkpoints/x"

"""``status.output``: where the current run's results are on the claim, what is there and how the
run went, from the trainer's final report (untrusted: only known names become paths).

Layout on the output claim (builders.py mounts ``<claim>/<job>`` at the work directory): run 0
writes ``<job>/output``, the n-th restart ``<job>/runs/<n>/output``; the trainer points the symlink
``<job>/latest`` at the newest finished output (replaced by a rename, never half there).
"""

from __future__ import annotations

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.lifecycle.reports import OutputReport

LATEST = "latest"
# what the trainer may say it wrote into output/ -> the status field naming it
ARTIFACTS = {"adapter": "adapter", "model": "model", "merged": "merged", "gguf": "gguf"}
SAMPLES_FILE = "samples.jsonl"


def run_prefix(run: int) -> str:
    """The run's directory relative to the job's directory: '' for run 0, else ``runs/<n>/``."""
    return "" if run == 0 else f"runs/{run}/"


def in_run(run: int, path: str) -> str:
    """A path the trainer reports relative to its work directory, relative to the job's one."""
    return f"{run_prefix(run)}{path}" if path else path


def location(job: m.FineTuneJob) -> m.OutputStatus:
    """Where the current run writes its output (nothing there yet: ``ready`` false)."""
    run = job.status.run
    return m.OutputStatus(
        claim=b.output_pvc_name(job),
        path=f"{job.name}/{run_prefix(run)}output",
        latest=f"{job.name}/{LATEST}",
        run=run,
    )


def finished(job: m.FineTuneJob, report: OutputReport | None) -> m.OutputStatus:
    """The output of a succeeded run: the location, plus what the trainer's report says is there
    (unknown names are ignored; a missing report leaves only the location)."""
    where = location(job)
    if report is None:
        return where.model_copy(update={"ready": True})
    written = set(report.written or ())
    paths = {field: f"{where.path}/{name}" for name, field in ARTIFACTS.items() if name in written}
    summary = report.summary
    best = None
    if summary is not None and summary.best_checkpoint_step is not None:
        best = in_run(where.run, f"checkpoints/checkpoint-{summary.best_checkpoint_step}")
    return where.model_copy(
        update={
            "ready": True,
            **paths,
            "samples_file": f"{where.path}/{SAMPLES_FILE}" if SAMPLES_FILE in written else None,
            "summary": m.OutputSummary(
                steps=summary.steps,
                tokens=summary.tokens,
                train_loss=summary.train_loss,
                eval_loss=summary.eval_loss,
                best_eval_loss=summary.best_eval_loss,
                best_checkpoint=best,
            )
            if summary is not None
            else None,
            "samples": [
                m.SampleGeneration(prompt=s.prompt[:200], completion=s.completion[:500])
                for s in (report.samples or [])
            ][:8],
        }
    )


def succeeded_message(out: m.OutputStatus) -> str:
    """The Succeeded message: names the claim and the run's output, and the stable path."""
    what = "adapter" if out.adapter else ("model" if out.model else "output")
    loss = ""
    if out.summary is not None and out.summary.eval_loss is not None:
        loss = f", eval loss {out.summary.eval_loss:.4g}"
    return (
        f"training finished{loss}; {what} in claim {out.claim} at {out.path} "
        f"(stable path for the newest run: {out.latest})"
    )


def with_exports(
    output: m.OutputStatus | None, outcomes: list[m.ExportOutcome]
) -> m.OutputStatus | None:
    """``status.output`` with what the export pod reports it wrote or pushed (failed exports stay
    out of it: the job's message names them); unchanged while the pod has not reported."""
    if output is None or not outcomes:
        return output
    done = [(o, export_location(output, o)) for o in outcomes if o.ok]
    exports = [
        m.ExportStatus(kind=o.kind, location=where[:2048], digest=o.digest)
        for o, where in done
        if where
    ]
    paths: dict[str, str | None] = {
        str(o.kind): where for o, where in done if where and o.kind in ("merged", "gguf")
    }
    return output.model_copy(update={"exports": exports[:16], **paths})


def export_location(output: m.OutputStatus | None, outcome: m.ExportOutcome) -> str | None:
    """Where an export is: a file the export pod wrote, relative to the claim (the pod reports it
    relative to the run's output directory; untrusted, so only a plain relative path is taken),
    or the OCI reference as pushed."""
    where = outcome.location
    if not where or outcome.kind == "oci":
        return where
    if output is None or where.startswith("/") or {"", ".", ".."} & set(where.split("/")):
        return None
    return f"{output.path}/{where}"

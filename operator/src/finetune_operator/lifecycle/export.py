"""The Exporting phase, pure: after the training pod succeeded, a CPU pod ``<job>-export`` runs
``finetune-trainer export`` (merged weights, GGUF, OCI push); its outcome decides Succeeded or
Failed with reason ExportFailed. The trained adapter is never touched by the export.

The export pod writes its report (``export.json``'s results, one JSON line) as its termination
message, so the operator reads it from the pod status without mounting the claim; ``outcomes``
parses it into ``models.ExportOutcome`` (what ``status.output.exports`` holds).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from finetune_operator import models as m
from finetune_operator.lifecycle.output import export_location
from finetune_operator.lifecycle.pods import PodKind, pod_state, sentence

P = m.Phase
R = m.Reason
K = PodKind
EXPORTING_REASON = "Exporting"


def wanted(job: m.FineTuneJob) -> bool:
    """Whether the job exports after training."""
    ex = job.spec.output.export
    return ex is not None and (ex.merged or ex.gguf is not None or ex.oci is not None)


def planned(job: m.FineTuneJob) -> str:
    """What the export pod makes, for messages: ``merged, gguf q4_k_m, oci ghcr.io/a/b:v1``."""
    ex = job.spec.output.export
    if ex is None:
        return "nothing"
    parts = ["merged"] if ex.merged or ex.gguf is not None else []
    if ex.gguf is not None:
        parts.append(f"gguf {ex.gguf.quantization}")
    if ex.oci is not None:
        parts.append(f"oci {ex.oci.repository}:{ex.oci.tag}")
    return ", ".join(parts)


def _termination_message(pod: dict[str, Any]) -> str | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term.get("message"):
            return str(term["message"])
    return None


def outcomes(pod: dict[str, Any]) -> list[m.ExportOutcome] | None:
    """The export pod's report (its termination message); None when absent or unreadable (a
    crash before the report: the message is then the trainer's one-line reason)."""
    text = _termination_message(pod)
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
        return [m.ExportOutcome.model_validate(r) for r in data.get("results") or []]
    except (ValueError, ValidationError, AttributeError):
        return None


def _done(job: m.FineTuneJob, results: list[m.ExportOutcome]) -> str:
    said = []
    for r in results:
        where = export_location(job.status.output, r) or ""
        if r.kind == "oci" and r.digest:
            where += f"@{r.digest}"
        said.append(f"{r.kind} {where}".strip())
    return "training finished; exported " + ", ".join(said)


def _failed(results: list[m.ExportOutcome] | None, pod_message: str | None) -> str:
    if results:
        bad = [f"{r.kind}: {r.error or 'failed'}" for r in results if not r.ok]
        if bad:
            return "export failed (" + "; ".join(bad) + "). The trained adapter is kept."
    return f"export failed: {sentence(pod_message) or 'the export pod failed.'} The trained " + (
        "adapter is kept."
    )


def derive_export(
    job: m.FineTuneJob, pod: dict[str, Any] | None
) -> tuple[str, str, str, list[m.ExportOutcome]]:
    """(phase, reason, message, outcomes) while Exporting, from the export pod (or its absence:
    the pod is created next)."""
    if pod is None:
        return P.EXPORTING, EXPORTING_REASON, f"training finished; exporting {planned(job)}", []
    state = pod_state(pod)
    results = outcomes(pod)
    if state.kind == K.SUCCEEDED:
        return P.SUCCEEDED, R.COMPLETED, _done(job, results or []), results or []
    if state.kind in {K.FAILED, K.WAITING_ERROR}:
        return P.FAILED, R.EXPORT_FAILED, _failed(results, state.message), results or []
    if state.kind == K.UNSCHEDULABLE:
        detail = f"export pod {state.name} cannot be scheduled: {sentence(state.message)}"
        return P.EXPORTING, EXPORTING_REASON, detail, []
    return P.EXPORTING, EXPORTING_REASON, f"exporting {planned(job)} in {state.name}", []

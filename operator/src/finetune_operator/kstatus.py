"""Pure port of kstatus' generic rules (``sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute``).

Flux, kpt and ``kubectl`` tooling built on cli-utils decide whether an applied custom resource is
done with these rules; ``tests/unit/gitops/test_kstatus.py`` checks that this port and the real
library (``tools/kstatus``) agree on every phase of a FineTuneJob. Only the rules that apply to a
custom resource are ported (no built-in kinds). Messages match the Go library's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

KStatus = Literal["InProgress", "Failed", "Current", "Terminating", "NotFound", "Unknown"]

IN_PROGRESS: KStatus = "InProgress"
FAILED: KStatus = "Failed"
CURRENT: KStatus = "Current"
TERMINATING: KStatus = "Terminating"


@dataclass(frozen=True)
class Result:
    """What kstatus says about one object."""

    status: KStatus
    message: str


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return []
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return []
    return [c for c in conditions if isinstance(c, Mapping)]


def _int(value: Any) -> int | None:
    # unstructured.NestedInt64 only accepts integers (a bool is not one)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def compute(obj: Mapping[str, Any]) -> Result:
    """kstatus of a custom resource given as a plain dict (as the API returns it)."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return Result(TERMINATING, "Resource scheduled for deletion")

    generation = _int(metadata.get("generation"))
    observed = _int(status.get("observedGeneration")) if isinstance(status, Mapping) else None
    if generation is not None and observed is not None and observed != generation:
        kind = obj.get("kind", "")
        return Result(
            IN_PROGRESS,
            f"{kind} generation is {generation}, but latest observed generation is {observed}",
        )

    conditions = _conditions(obj)
    for cond in conditions:
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return Result(IN_PROGRESS, str(cond.get("message", "")))
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return Result(FAILED, str(cond.get("message", "")))

    for cond in conditions:
        if cond.get("type") != "Ready":
            continue
        if cond.get("status") == "True":
            return Result(CURRENT, "Resource is Ready")
        if cond.get("status") in ("False", "Unknown"):
            return Result(IN_PROGRESS, str(cond.get("message", "")))

    return Result(CURRENT, "Resource is current")

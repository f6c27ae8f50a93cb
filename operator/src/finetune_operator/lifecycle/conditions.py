"""Conditions (kstatus): one row of CONDITION_TABLE per phase, set like apimachinery's
``meta.SetStatusCondition``."""

from __future__ import annotations

from datetime import datetime

from finetune_operator import models as m

C = m.ConditionType
P = m.Phase
MAX_MESSAGE = 1024
_T, _F = "True", "False"

# phase -> status of (Ready, Reconciling, Stalled, Progressing, Suspended, Succeeded, Failed).

CONDITION_TABLE: dict[str, tuple[str, str, str, str, str, str, str]] = {
    P.PENDING: (_F, _T, _F, _T, _F, _F, _F),
    P.PREPARING: (_F, _T, _F, _T, _F, _F, _F),
    P.QUEUED: (_T, _F, _F, _F, _F, _F, _F),
    P.STARTING: (_F, _T, _F, _T, _F, _F, _F),
    P.RUNNING: (_T, _F, _F, _T, _F, _F, _F),
    P.SUSPENDING: (_F, _T, _F, _F, _F, _F, _F),
    P.SUSPENDED: (_T, _F, _F, _F, _T, _F, _F),
    # the adapter is trained and kept; the CPU export pod works: admitted and behaving (Ready),
    # not yet Succeeded, so `kubectl wait --for=condition=Succeeded` includes the exports
    P.EXPORTING: (_T, _F, _F, _T, _F, _F, _F),
    P.SUCCEEDED: (_T, _F, _F, _F, _F, _T, _F),
    P.FAILED: (_F, _F, _T, _F, _F, _F, _T),
}

_CONDITION_ORDER = (
    C.READY,
    C.RECONCILING,
    C.STALLED,
    C.PROGRESSING,
    C.SUSPENDED,
    C.SUCCEEDED,
    C.FAILED,
)


def set_condition(conditions: list[m.Condition], new: m.Condition) -> list[m.Condition]:
    """Insert or update ``new`` by type; ``lastTransitionTime`` moves only when status flips
    (apimachinery ``meta.SetStatusCondition``)."""
    out: list[m.Condition] = []
    found = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        found = True
        if cond.status == new.status:
            out.append(new.model_copy(update={"last_transition_time": cond.last_transition_time}))
        else:
            out.append(new)
    if not found:
        out.append(new)
    return out


def conditions_for(
    phase: str,
    *,
    reason: str | None,
    message: str | None,
    generation: int,
    old: list[m.Condition],
    now: datetime,
) -> list[m.Condition]:
    """All seven conditions for a phase (reason: the phase, or the failure reason)."""
    conditions = list(old)
    for ctype, status in zip(_CONDITION_ORDER, CONDITION_TABLE[phase], strict=True):
        cond_reason = reason if (phase == P.FAILED and reason) else phase
        conditions = set_condition(
            conditions,
            m.Condition(
                type=ctype,
                status=status,  # type: ignore[arg-type]
                reason=cond_reason,
                message=(message or "")[:MAX_MESSAGE],
                last_transition_time=now,
                observed_generation=generation,
            ),
        )
    order = {t: i for i, t in enumerate(_CONDITION_ORDER)}
    return sorted(conditions, key=lambda c: order.get(c.type, len(order)))

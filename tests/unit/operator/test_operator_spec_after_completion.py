"""A finished job whose spec is edited (GitOps: Git now shows settings that were never trained)
says so: a Warning Event, the conditions' message, and status.completedGeneration for Argo CD."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from finetune_operator import lifecycle as st
from finetune_operator import models as m
from tests.unit.operator.conftest import NOW, derive

JobF = Callable[..., m.FineTuneJob]
R = m.Reason


@pytest.mark.parametrize(("phase", "reason"), [("Succeeded", "Completed"), ("Failed", "DiskFull")])
def test_an_edit_after_completion_is_an_event_and_a_condition_message(
    make_job: JobF, phase: str, reason: str
) -> None:
    finished = {"phase": phase, "reason": reason, "message": "it ended", "observedGeneration": 1}
    same = derive(make_job(status=finished), [], None, None, NOW)
    assert same.completed_generation == 1
    assert all(c.message == "it ended" for c in same.conditions)
    assert st.transition_events(make_job(status=finished).status, same) == []

    edited = make_job(status=m.dump(same), generation=2)
    new = derive(edited, [], None, None, NOW)
    assert (new.phase, new.observed_generation, new.completed_generation) == (phase, 2, 1)
    assert new.message == "it ended"  # the status message keeps how it ended
    ready = next(c for c in new.conditions if c.type == "Ready")
    assert ready.message is not None and ready.message.startswith("spec changed after completion")
    assert "restart" in ready.message and ready.message.endswith("it ended")
    [(kind, why, message)] = st.transition_events(edited.status, new)
    assert (kind, why) == ("Warning", R.SPEC_CHANGED) and "generation 2" in message
    # the next reconcile of the same generation repeats no Event
    again = derive(edited.model_copy(update={"status": new}), [], None, None, NOW)
    assert st.transition_events(new, again) == []


def test_a_job_ending_now_records_its_generation(make_job: JobF, make_pod: Callable) -> None:
    job = make_job(
        status={"phase": "Running", "attempt": 1, "plan": {"microBatchSize": 4}}, generation=3
    )
    pod = make_pod("bot-1", attempt=1, phase="Succeeded", exit_code=0)
    new = derive(job, [pod], None, None, NOW)
    assert (new.phase, new.completed_generation) == ("Succeeded", 3)
    running = derive(make_job(status={"phase": "Running", "attempt": 1}), [], None, None, NOW)
    assert running.completed_generation is None

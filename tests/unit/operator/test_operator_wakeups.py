"""Per-job timers: the earliest wake-up wins, cancelled ones never fire, due ones fire once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from finetune_operator.wakeups import Wakeups

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def test_the_earliest_wake_up_of_a_job_wins_and_fires_once() -> None:
    w = Wakeups(lambda ns, name: None)
    w.schedule(("ml", "a"), T0 + timedelta(seconds=30))
    w.schedule(("ml", "a"), T0 + timedelta(seconds=10))
    w.schedule(("ml", "a"), T0 + timedelta(seconds=20))  # later: ignored
    w.schedule(("ml", "b"), T0 + timedelta(seconds=15))
    assert w.pending() == {
        ("ml", "a"): T0 + timedelta(seconds=10),
        ("ml", "b"): T0 + timedelta(seconds=15),
    }
    assert w.due(T0 + timedelta(seconds=9)) == []
    assert w.due(T0 + timedelta(seconds=12)) == [("ml", "a")]
    assert w.due(T0 + timedelta(seconds=40)) == [("ml", "b")]  # a's stale entries never fire
    assert w.pending() == {}


def test_a_cancelled_wake_up_never_fires() -> None:
    w = Wakeups(lambda ns, name: None)
    w.schedule(("ml", "a"), T0)
    w.cancel(("ml", "a"))
    assert w.due(T0 + timedelta(hours=1)) == []


def test_run_fires_due_jobs_and_survives_a_failing_one() -> None:
    fired: list[str] = []
    stop = threading.Event()

    def fire(namespace: str, name: str) -> None:
        fired.append(name)
        if name == "bad":
            raise RuntimeError("boom")
        stop.set()

    w = Wakeups(fire)
    w.schedule(("ml", "bad"), T0)
    w.schedule(("ml", "good"), T0 + timedelta(seconds=1))
    w.run(stop, clock=lambda: T0 + timedelta(seconds=2))
    assert fired == ["bad", "good"]

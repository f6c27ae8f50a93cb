"""Per-job timers: a job that must be looked at again at a known time (a retry's backoff, its TTL,
a deadline) is reconciled then, instead of being polled.

Each job has at most one pending wake-up, the earliest asked for; a reconcile re-arms it from the
job's new status (``lifecycle.wake_at``). One thread sleeps until the earliest one is due and
hands the job to ``fire`` (which must not block for long: it submits to a pool).
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Wakeups:
    """The pending wake-ups of all jobs."""

    def __init__(self, fire: Callable[[str, str], None]) -> None:
        self._fire = fire
        self._due: dict[Key, datetime] = {}
        self._heap: list[tuple[datetime, Key]] = []
        self._changed = threading.Condition()

    def schedule(self, key: Key, at: datetime) -> None:
        """Wake ``key`` at ``at`` (or earlier, if an earlier wake-up is pending)."""
        with self._changed:
            current = self._due.get(key)
            if current is not None and current <= at:
                return
            self._due[key] = at
            heapq.heappush(self._heap, (at, key))
            self._changed.notify()

    def cancel(self, key: Key) -> None:
        with self._changed:
            self._due.pop(key, None)  # its heap entry is skipped when it comes up

    def pending(self) -> dict[Key, datetime]:
        with self._changed:
            return dict(self._due)

    def due(self, now: datetime) -> list[Key]:
        """Remove and return the jobs whose time has come."""
        out: list[Key] = []
        with self._changed:
            while self._heap and self._heap[0][0] <= now:
                at, key = heapq.heappop(self._heap)
                if self._due.get(key) == at:
                    del self._due[key]
                    out.append(key)
        return out

    def _seconds_to_next(self, now: datetime, limit: float) -> float:
        if not self._heap:
            return limit
        return max(0.0, min(limit, (self._heap[0][0] - now).total_seconds()))

    def run(self, stop: threading.Event, clock: Callable[[], datetime] = _utcnow) -> None:
        """Fire due wake-ups until ``stop`` is set (seen within 5 s)."""
        while not stop.is_set():
            for namespace, name in self.due(clock()):
                try:
                    self._fire(namespace, name)
                except Exception:  # one job's failure never stops the others' timers
                    log.exception("wake-up of %s/%s failed", namespace, name)
            with self._changed:
                self._changed.wait(self._seconds_to_next(clock(), 5.0))

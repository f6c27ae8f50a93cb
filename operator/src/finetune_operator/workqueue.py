"""A de-duplicating work queue of job keys, as client-go's ``workqueue`` (a queue, a dirty set and
a processing set).

Watch events, wake-ups and the resync only ``add`` a job's key; a few worker threads ``get`` a
key, reconcile the job and say ``done``. A key is never handed to two workers at once, so one
job is reconciled by one thread at a time, and a burst of events of one job costs one reconcile:

* a key waiting in the queue (dirty, not being processed) is not queued again; the asks of the
  adds are merged (``merge``, e.g. "re-check the children" OR-ed in);
* a key being processed that is added again is only marked dirty: ``done`` puts it back at the end
  of the queue once, with every ask merged since ``get``.

No I/O here; the handlers own the threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")


class WorkQueue(Generic[K, A]):
    """Keys ``K`` waiting for a worker, each with what was asked of it (``A``, merged)."""

    def __init__(self, merge: Callable[[A, A], A]) -> None:
        self._merge = merge
        self._queue: deque[K] = deque()  # dirty keys not being processed, oldest first
        self._dirty: dict[K, A] = {}  # every key that wants a (further) run, with its asks
        self._processing: set[K] = set()
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: K, ask: A) -> None:
        """Ask for a run of ``key`` (merged into a run already waiting, or into the next one of
        a key being processed now). Never blocks for long: safe from the event loop."""
        with self._cond:
            if self._closed:
                return
            if key in self._dirty:
                self._dirty[key] = self._merge(self._dirty[key], ask)
                return
            self._dirty[key] = ask
            if key in self._processing:  # queued by done()
                return
            self._queue.append(key)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> tuple[K, A] | None:
        """The oldest waiting key and its asks, now being processed (``done`` must follow);
        None when nothing came within ``timeout`` seconds (0: do not wait) or the queue is shut
        down and empty."""
        with self._cond:
            if not self._queue and not self._closed and timeout != 0:
                self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            if not self._queue:
                return None
            key = self._queue.popleft()
            self._processing.add(key)
            return key, self._dirty.pop(key)

    def done(self, key: K) -> None:
        """The run of ``key`` ended: when it was added meanwhile, it waits again (at the end)."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        """No more adds; workers drain what is queued, then ``get`` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting (being processed ones not counted)."""
        with self._cond:
            return len(self._queue)

    def busy(self) -> int:
        """Keys being processed now."""
        with self._cond:
            return len(self._processing)


class Timings:
    """How long the runs of a queue waited and took, summed until ``take`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs, self._wait, self._max_wait, self._run = 0, 0.0, 0.0, 0.0

    def record(self, waited: float, ran: float) -> None:
        with self._lock:
            self._runs += 1
            self._wait += waited
            self._max_wait = max(self._max_wait, waited)
            self._run += ran

    def take(self) -> tuple[int, float, float, float]:
        """(runs, mean wait, longest wait, mean run time) since the last take; then reset."""
        with self._lock:
            n = self._runs
            out = (n, self._wait / n, self._max_wait, self._run / n) if n else (0, 0.0, 0.0, 0.0)
            self._runs, self._wait, self._max_wait, self._run = 0, 0.0, 0.0, 0.0
            return out

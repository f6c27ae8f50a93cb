"""The de-duplicating work queue: one run per burst of adds, never one key in two workers, no add
lost (threads racing for real, synchronised by the queue itself, events and joins)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from finetune_operator.workqueue import Timings, WorkQueue


def _or(a: bool, b: bool) -> bool:
    return a or b


def _union(a: frozenset[int], b: frozenset[int]) -> frozenset[int]:
    return a | b


def test_a_key_waiting_is_queued_once_with_its_asks_merged() -> None:
    q: WorkQueue[str, bool] = WorkQueue(_or)
    q.add("a", False)
    q.add("b", False)
    q.add("a", True)  # a child deleted meanwhile: OR-ed into the waiting run
    q.add("a", False)
    assert len(q) == 2
    assert q.get(timeout=0) == ("a", True)
    assert q.get(timeout=0) == ("b", False)
    assert q.get(timeout=0) is None


def test_a_key_added_while_processed_runs_again_once_after_done() -> None:
    q: WorkQueue[str, bool] = WorkQueue(_or)
    q.add("a", False)
    assert q.get(timeout=0) == ("a", False)
    q.add("a", True)
    q.add("a", False)
    assert q.get(timeout=0) is None  # never to a second worker while the first one has it
    assert q.busy() == 1
    q.done("a")
    assert q.get(timeout=0) == ("a", True)
    q.done("a")
    assert q.get(timeout=0) is None and q.busy() == 0


def test_done_without_a_new_add_does_not_requeue() -> None:
    q: WorkQueue[str, bool] = WorkQueue(_or)
    q.add("a", False)
    q.add("b", False)
    key, _ = q.get(timeout=0) or ("", False)
    q.done(key)
    assert q.get(timeout=0) == ("b", False)
    assert q.get(timeout=0) is None


def test_a_waiting_worker_is_woken_by_an_add_and_by_shut_down() -> None:
    q: WorkQueue[str, bool] = WorkQueue(_or)
    got: list[tuple[str, bool] | None] = []
    worker = threading.Thread(target=lambda: got.append(q.get()))
    worker.start()
    q.add("a", True)
    worker.join(timeout=10)
    assert not worker.is_alive() and got == [("a", True)]
    idle = threading.Thread(target=lambda: got.append(q.get()))
    idle.start()
    q.shut_down()
    idle.join(timeout=10)
    assert not idle.is_alive() and got[-1] is None
    q.add("b", False)  # after shut-down: ignored
    assert len(q) == 0


@pytest.fixture
def _switch_often() -> Iterator[None]:
    """Threads switch every microsecond (not every 5 ms): the interleavings happen for real."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("_switch_often")
def test_racing_adders_and_workers_lose_no_ask_and_never_share_a_key() -> None:
    """8 adders and 4 workers on 20 keys (many adds land on a key a worker holds, like an event
    during a reconcile); every add carries a token: each token is run exactly once."""
    q: WorkQueue[int, frozenset[int]] = WorkQueue(_union)
    keys, per_adder, adders, workers = 20, 500, 8, 4
    start = threading.Barrier(adders + workers)
    guard = threading.Lock()
    held: set[int] = set()
    seen: list[int] = []
    shared: list[int] = []

    def add(i: int) -> None:
        start.wait()
        for n in range(per_adder):
            token = i * per_adder + n
            q.add(token % keys, frozenset({token}))

    def work() -> None:
        start.wait()
        while (item := q.get(timeout=None)) is not None:
            key, tokens = item
            with guard:
                if key in held:
                    shared.append(key)
                held.add(key)
                seen.extend(tokens)
            sum(range(200))  # the "reconcile": long enough for adds of this key to land in it
            with guard:
                held.discard(key)
            q.done(key)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(adders)]
    threads += [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads[:adders]:
        t.join(timeout=60)
    q.shut_down()  # the workers drain what is left, then stop
    for t in threads[adders:]:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert shared == []
    assert sorted(seen) == list(range(adders * per_adder))  # none lost, none run twice
    assert len(q) == 0 and q.busy() == 0


def test_timings_sum_until_taken() -> None:
    t = Timings()
    assert t.take() == (0, 0.0, 0.0, 0.0)
    t.record(1.0, 0.25)
    t.record(3.0, 0.75)
    assert t.take() == (2, 2.0, 3.0, 0.5)
    assert t.take() == (0, 0.0, 0.0, 0.0)

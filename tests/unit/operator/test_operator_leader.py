"""Leader election on a Lease: who may write it when, and how a replica gains and loses the lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_operator import handlers, kube, leader

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def state(holder: str | None, renewed: datetime | None, transitions: int = 0) -> leader.LeaseState:
    return leader.LeaseState(holder, renewed, 15, transitions, "7")


@pytest.mark.parametrize(
    ("current", "writes", "transitions"),
    [
        (None, True, 0),  # no Lease yet: create it
        (state("me", T0 - timedelta(seconds=5)), True, None),  # mine: renew
        (state("other", T0 - timedelta(seconds=14)), False, None),  # another's, still valid
        (state("other", T0 - timedelta(seconds=15), 3), True, 4),  # another's, expired: take
        (state(None, T0), True, 1),  # released: take at once
    ],
)
def test_next_spec(
    current: leader.LeaseState | None, writes: bool, transitions: int | None
) -> None:
    spec = leader.next_spec(current, "me", T0, 15)
    assert (spec is not None) == writes
    if spec is not None:
        assert spec["holderIdentity"] == "me" and spec["renewTime"] == "2026-11-26T12:00:00.000000Z"
        assert spec.get("leaseTransitions") == transitions


class FakeLease:
    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.rv = 0
        self.fail: Exception | None = None

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail:
            raise self.fail
        return self.obj

    def write(self, namespace: str, name: str, spec: dict[str, Any], rv: str | None) -> None:
        current = self.obj["metadata"]["resourceVersion"] if self.obj else None
        if rv != current:
            raise kube.ConflictError("PUT lease", 409, "the object has been modified")
        self.rv += 1
        self.obj = {"metadata": {"resourceVersion": str(self.rv)}, "spec": spec}


@pytest.fixture
def lease(monkeypatch: pytest.MonkeyPatch) -> FakeLease:
    fake = FakeLease()
    monkeypatch.setattr(kube, "get_lease", fake.get)
    monkeypatch.setattr(kube, "write_lease", fake.write)
    return fake


def test_one_of_two_replicas_leads_and_the_other_takes_over(lease: FakeLease) -> None:
    now = [T0]
    elected: list[str] = []
    a = leader.Elector(
        "ml", "op", "a", clock=lambda: now[0], on_elected=lambda: elected.append("a")
    )
    b = leader.Elector(
        "ml", "op", "b", clock=lambda: now[0], on_elected=lambda: elected.append("b")
    )
    assert (a.step(), b.step()) == (True, False)
    now[0] += timedelta(seconds=5)
    assert (a.step(), b.step()) == (True, False)  # renewed
    now[0] += timedelta(seconds=14)  # a stopped renewing 14 s ago: not yet
    assert b.step() is False
    now[0] += timedelta(seconds=1)
    assert b.step() is True
    assert a.step() is False  # a came back: b holds a valid lease
    assert elected == ["a", "b"]
    assert lease.obj is not None and lease.obj["spec"]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_steps_down_before_it_may_be_replaced(lease: FakeLease) -> None:
    now = [T0]
    a = leader.Elector("ml", "op", "a", clock=lambda: now[0])
    assert a.step()
    lease.fail = kube.TransientError("GET lease", 503, "unavailable")
    now[0] += timedelta(seconds=5)
    assert a.step()  # one missed renewal: still leading
    now[0] += timedelta(seconds=5)
    assert not a.step()  # 10 s >= 2/3 of 15 s: stepped down, 5 s before another may take it


def test_release_lets_the_other_replica_lead_at_once(lease: FakeLease) -> None:
    a = leader.Elector("ml", "op", "a", clock=lambda: T0)
    b = leader.Elector("ml", "op", "b", clock=lambda: T0)
    assert a.step() and not b.step()
    a.release()
    assert b.step() and not a.leading.is_set()


def test_a_follower_does_not_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    follower = leader.Elector("ml", "op", "b")
    monkeypatch.setattr(handlers, "_elector", follower)

    def unexpected(*_: Any) -> None:
        raise AssertionError("a follower read the job")

    monkeypatch.setattr(kube, "get_job", unexpected)
    handlers.reconcile("ml", "bot")
    handlers.resync_once()

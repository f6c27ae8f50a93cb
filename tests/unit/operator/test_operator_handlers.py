"""The reconcile's I/O decisions against a fake API: a child the apiserver refuses fails the job,
deleted children come back with an Event, and a namespace that cannot be listed blocks no other."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_operator import handlers, kube, views
from finetune_operator import models as m
from finetune_operator.workqueue import WorkQueue
from tests.unit.operator.conftest import job_body, pod

R = m.Reason


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    """Each test starts as a freshly started operator: no child checked yet, no index."""
    handlers._children_ok.clear()
    handlers._queue = WorkQueue(handlers._merged)
    yield
    assert len(handlers._queue) == 0, "a test left reconciles queued"
    handlers._indexes.clear()
    handlers._indexes_ready.clear()
    handlers._written = views.Written()
    handlers._unsettled = views.Unsettled()
    handlers._drift = views.Drift()


def event(handler: Any, **kwargs: Any) -> None:
    """kopf calls the (async) handler, which only queues the job; a worker then runs it."""
    asyncio.run(handler(**kwargs))
    handlers.drain()


def owned(p: dict[str, Any]) -> dict[str, Any]:
    """A pod of the job (uid-1), as the operator makes them."""
    p["metadata"]["ownerReferences"] = [{"kind": "FineTuneJob", "name": "bot", "uid": "uid-1"}]
    return p


PREPARED = {
    "phase": "Running",
    "attempt": 1,
    "plan": {"strategy": "single", "microBatchSize": 4, "gradientAccumulation": 2},
}
OK = '{"ok": true, "total_steps": 20}'


class FakeApi:
    """Just enough of kube.py: objects by (kind, name); what was created, patched, emitted."""

    def __init__(self, job: dict[str, Any], existing: set[str]) -> None:
        self.job, self.existing = job, set(existing)
        self.pods: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.patches: list[dict[str, Any]] = []
        self.refuse: dict[str, kube.RejectedError] = {}
        self.progress: dict[str, str] | None = {"prepare.json": OK}
        self.progress_owner = "uid-1"  # another uid: a namesake made by someone else

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "get_job", "list_pods", "get_config_map", "exists", "create_or_get",
            "apply_config_map", "list_nodes", "delete_pod", "patch_job_status", "emit_event",
        ):  # fmt: skip
            monkeypatch.setattr(kube, name, getattr(self, name))

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.job

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self.pods

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        if f"ConfigMap {name}" not in self.existing:
            return None
        owners = [{"kind": "FineTuneJob", "name": "bot", "uid": self.progress_owner}]
        meta = {"name": name, "resourceVersion": "1", "ownerReferences": owners}
        return {"metadata": meta, "data": self.progress}

    def exists(self, kind: str, namespace: str, name: str) -> bool:
        return kind == "PersistentVolumeClaim" or f"{kind} {name}" in self.existing

    def create_or_get(self, body: dict[str, Any]) -> bool:
        key = f"{body['kind']} {body['metadata']['name']}"
        if body["kind"] in self.refuse:
            raise kube.ChildRejectedError(self.refuse[body["kind"]], body["kind"], key)
        if key in self.existing:
            return False
        self.existing.add(key)
        self.created.append(key)
        return True

    def apply_config_map(self, body: dict[str, Any]) -> None:
        self.create_or_get(body)

    def list_nodes(self) -> list[dict[str, Any]]:
        return []

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        pass

    def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], rv: str | None = None
    ) -> dict[str, Any]:
        if rv != self.job["metadata"].get("resourceVersion"):
            raise kube.ConflictError("PATCH status", 409, "the object has been modified")
        self.patches.append(patch)
        return {}  # no answer to remember: the next pass reads the job again

    def emit_event(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))


ALL = {
    "ServiceAccount bot-trainer", "Role bot-trainer", "RoleBinding bot-trainer",
    "ConfigMap bot-progress", "ConfigMap bot-config",
}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "reason"),
    [(422, R.BAD_SPEC), (400, R.BAD_SPEC), (403, R.NOT_ALLOWED)],
)
def test_a_refused_child_fails_the_job_with_the_apiservers_message(
    monkeypatch: pytest.MonkeyPatch, status: int, reason: str
) -> None:
    fake = FakeApi(job_body(), set())
    detail = 'Pod "bot-prepare" is invalid: spec.containers[0].volumeMounts[1].name: Not found: "x"'
    fake.refuse["Pod"] = kube.RejectedError("POST pods", status, detail)
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    final = fake.patches[-1]
    assert (final["phase"], final["reason"]) == ("Failed", reason)
    assert final["message"] == f"The API server refused to create the Pod: {detail}."
    assert ("Warning", reason, final["message"]) in fake.events


def test_a_namesake_progress_config_map_is_never_read_as_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ConfigMap named like the job's progress one but owned by someone else: its "prepare
    finished" report is not read (the job would go on to train from a forged plan), and
    creating ours fails NameConflict."""
    fake = FakeApi(job_body(), ALL)
    fake.progress_owner = "uid-someone-else"
    create = fake.create_or_get

    def taken(body: dict[str, Any]) -> bool:
        if body["metadata"]["name"] == "bot-progress":
            raise kube.NotOwnedError("ConfigMap bot-progress exists and is not the job's")
        return create(body)

    fake.install(monkeypatch)
    monkeypatch.setattr(kube, "create_or_get", taken)
    handlers.reconcile("ml", "bot")
    final = fake.patches[-1]
    assert (final["phase"], final["reason"]) == ("Failed", R.NAME_CONFLICT)
    assert "plan" not in final
    assert not [c for c in fake.created if c.startswith("Pod ")]


def test_a_transient_error_is_retried_not_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(job_body(), set())
    fake.install(monkeypatch)

    def unavailable(body: dict[str, Any]) -> bool:
        raise kube.TransientError("POST pods", 503, "etcd leader changed")

    monkeypatch.setattr(kube, "create_or_get", unavailable)
    with pytest.raises(kube.TransientError):
        handlers.reconcile("ml", "bot")
    assert all(p.get("phase") != "Failed" for p in fake.patches)
    event(handlers.job_changed, name="bot", namespace="ml")  # from the queue: tried again later
    due = handlers._wakeups.pending()[("ml", "bot")]
    assert 4 <= (due - datetime.now(UTC)).total_seconds() <= 5
    handlers._wakeups.cancel(("ml", "bot"))


def test_a_refused_request_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(job_body(), set())
    fake.install(monkeypatch)

    def refused(namespace: str, name: str) -> dict[str, Any]:
        raise kube.RejectedError("GET job", 400, "bad request")

    monkeypatch.setattr(kube, "get_job", refused)
    event(handlers.job_changed, name="bot", namespace="ml")
    assert ("ml", "bot") not in handlers._wakeups.pending()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, kube.NotFoundError), (409, kube.ConflictError), (400, kube.RejectedError),
        (403, kube.RejectedError), (422, kube.RejectedError), (401, kube.TransientError),
        (429, kube.TransientError), (500, kube.TransientError), (503, kube.TransientError),
    ],
)  # fmt: skip
def test_error_mapping(status: int, kind: type[kube.KubeError]) -> None:
    assert type(kube._error("GET x", status, "m")) is kind


def test_exceeded_quota_is_transient() -> None:
    err = kube._error("POST pods", 403, 'pods "a" is forbidden: exceeded quota: gpu')
    assert isinstance(err, kube.TransientError)


def test_deleted_children_are_created_again_with_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    body = job_body(status=PREPARED)
    fake = FakeApi(body, ALL - {"RoleBinding bot-trainer", "ConfigMap bot-progress"})
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    assert sorted(fake.created) == ["ConfigMap bot-progress", "RoleBinding bot-trainer"]
    again = "was missing and has been created again."
    assert sorted(e for e in fake.events if e[1] == R.CHILD_RECREATED) == [
        ("Warning", R.CHILD_RECREATED, f"ConfigMap bot-progress {again}"),
        ("Warning", R.CHILD_RECREATED, f"RoleBinding bot-trainer {again}"),
    ]


def test_children_are_checked_once_then_again_only_after_a_deletion_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = job_body(status=PREPARED)
    fake = FakeApi(body, ALL)
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.install(monkeypatch)
    asked: list[str] = []
    create = fake.create_or_get

    def counting(child: dict[str, Any]) -> bool:
        asked.append(f"{child['kind']} {child['metadata']['name']}")
        return create(child)

    monkeypatch.setattr(kube, "create_or_get", counting)
    handlers.reconcile("ml", "bot")
    assert sorted(asked) == ["Role bot-trainer", "RoleBinding bot-trainer",
                             "ServiceAccount bot-trainer"]  # fmt: skip
    asked.clear()
    handlers.reconcile("ml", "bot")  # a progress report, a resync: nothing asked again
    assert asked == []

    fake.existing.discard("RoleBinding bot-trainer")  # deleted by hand; the watch says so
    event(handlers.child_event, type="DELETED", namespace="ml", labels={m.LABEL_JOB: "bot"})
    assert "RoleBinding bot-trainer" in asked and fake.created == ["RoleBinding bot-trainer"]
    assert R.CHILD_RECREATED in {e[1] for e in fake.events}
    asked.clear()
    event(handlers.child_event, type="MODIFIED", namespace="ml", labels={m.LABEL_JOB: "bot"})
    assert asked == []  # only a deletion matters


def test_a_deletion_during_a_reconcile_in_flight_is_not_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The storm case: the progress ConfigMap, then the RoleBinding deleted. A worker's
    reconcile of the first deletion has read the memo ("children checked") and is re-creating
    the ConfigMap when the second deletion's event comes (on kopf's thread); the job runs again
    after it, with the memo cleared, and the RoleBinding comes back."""
    body = job_body(status=PREPARED)
    fake = FakeApi(body, ALL)
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")  # children checked and memoised
    fake.existing.discard("ConfigMap bot-progress")
    inside, fired = threading.Event(), threading.Event()
    create = fake.create_or_get

    def deleted_meanwhile(child: dict[str, Any]) -> bool:
        if not inside.is_set():  # the worker, inside the first reconcile
            fake.existing.discard("RoleBinding bot-trainer")
            inside.set()
            assert fired.wait(timeout=10)
        return create(child)

    monkeypatch.setattr(kube, "create_or_get", deleted_meanwhile)
    asyncio.run(handlers.pod_event(type="MODIFIED", namespace="ml", labels={m.LABEL_JOB: "bot"}))
    worker = threading.Thread(target=handlers.drain)
    worker.start()
    assert inside.wait(timeout=10)
    deleted = {"type": "DELETED", "namespace": "ml", "labels": {m.LABEL_JOB: "bot"}}
    asyncio.run(handlers.child_event(**deleted))
    assert len(handlers._queue) == 0  # not handed to another worker while this one has it
    fired.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert fake.created[-2:] == ["ConfigMap bot-progress", "RoleBinding bot-trainer"]


def test_a_running_pods_deleted_config_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its kubelet re-mounts the volume: a missing ConfigMap would make FailedMount warnings."""
    fake = FakeApi(job_body(status=PREPARED), ALL)
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    assert fake.created == []
    fake.existing.discard("ConfigMap bot-config")
    handlers.reconcile("ml", "bot")  # a progress report: no read of it
    assert fake.created == []
    event(handlers.child_event, type="DELETED", namespace="ml", labels={m.LABEL_JOB: "bot"})
    assert fake.created == ["ConfigMap bot-config"]


def test_a_deleted_job_is_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(job_body(status=PREPARED), ALL)
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    assert handlers._children_ok

    def gone(namespace: str, name: str) -> dict[str, Any]:
        raise kube.NotFoundError("GET bot", 404, "not found")

    monkeypatch.setattr(kube, "get_job", gone)
    handlers.reconcile("ml", "bot")
    assert handlers._children_ok == set()


def test_the_config_of_a_pod_not_started_yet_is_created_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeApi(job_body(status=PREPARED), ALL - {"ConfigMap bot-config"})
    fake.pods = [owned(pod("bot-1", phase="Pending"))]
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    assert fake.created == ["ConfigMap bot-config"]


def test_nothing_is_created_for_a_finished_job(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(job_body(status={"phase": "Succeeded"}), set())
    fake.install(monkeypatch)
    handlers.reconcile("ml", "bot")
    assert fake.created == []


def test_a_namespace_that_cannot_be_listed_blocks_no_other(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    item = job_body()
    done: list[str] = []

    def list_jobs(namespace: str | None) -> list[dict[str, Any]]:
        if namespace == "gone":
            raise kube.RejectedError("GET finetunejobs", 403, "forbidden in gone")
        return [item]

    ours = handlers.Settings(namespaces=["gone", "ml"])
    monkeypatch.setattr(handlers, "operator_settings", lambda: ours)
    monkeypatch.setattr(kube, "list_jobs", list_jobs)
    monkeypatch.setattr(kube, "list_labelled", lambda namespace, plural, selector: [])
    monkeypatch.setattr(kube, "list_names", lambda kind, ns, selector: set())
    monkeypatch.setattr(handlers, "reconcile", lambda ns, name, **_: done.append(f"{ns}/{name}"))
    with caplog.at_level(logging.WARNING, logger=handlers.__name__):
        handlers.resync_once()
        handlers.drain()
        handlers.resync_once()
        handlers.drain()
    assert done == ["ml/bot", "ml/bot"]
    warnings = [r.getMessage() for r in caplog.records if "cannot list" in r.getMessage()]
    assert len(warnings) == 1 and "forbidden in gone" in warnings[0]


class Listing:
    """kube.list_names over a FakeApi's objects (the metadata-only LIST of the resync)."""

    def __init__(self, fake: FakeApi) -> None:
        self.fake, self.calls = fake, 0
        self.error: kube.KubeError | None = None

    def __call__(self, kind: str, namespace: str | None, selector: str) -> set[tuple[str, str]]:
        self.calls += 1
        assert selector == f"app.kubernetes.io/managed-by=finetune-operator,{m.LABEL_JOB}"
        if self.error is not None:
            raise self.error
        return {("ml", k.split(" ", 1)[1]) for k in self.fake.existing if k.split(" ")[0] == kind}


def _resync_setup(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeApi, Listing]:
    body = job_body(status=PREPARED)
    body["metadata"]["namespace"] = "ml"
    fake = FakeApi(body, ALL)
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.install(monkeypatch)
    listing = Listing(fake)
    monkeypatch.setattr(kube, "list_names", listing)
    monkeypatch.setattr(kube, "list_labelled", lambda namespace, plural, selector: [])
    monkeypatch.setattr(kube, "list_jobs", lambda namespace: [body])
    ours = handlers.Settings(namespaces=["ml"])
    monkeypatch.setattr(handlers, "operator_settings", lambda: ours)
    return fake, listing


@pytest.mark.parametrize("child", ["RoleBinding bot-trainer", "ConfigMap bot-config",
                                   "ServiceAccount bot-trainer", "Role bot-trainer"])  # fmt: skip
def test_the_resync_brings_back_a_child_whose_deletion_event_was_missed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, child: str
) -> None:
    """The storm case that the memo fix did not cover: the child's DELETED event never reached
    the handler (a watch reconnecting, or started after the deletion). The memo still says
    "checked"; the resync's metadata-only LISTs notice the gap."""
    fake, listing = _resync_setup(monkeypatch)
    handlers.reconcile("ml", "bot")  # children checked and memoised
    fake.existing.discard(child)  # deleted; no event
    handlers.reconcile("ml", "bot")  # a progress report: the memo vouches for it
    assert fake.created == []
    with caplog.at_level(logging.WARNING, logger=handlers.__name__):
        handlers.resync_once()
        handlers.drain()
    assert fake.created == [child]
    assert R.CHILD_RECREATED in {e[1] for e in fake.events}
    assert any("no deletion was seen" in r.getMessage() for r in caplog.records)
    assert listing.calls == 4  # one LIST per kind, not per job
    fake.created.clear()
    handlers.resync_once()  # all there again: nothing re-checked
    handlers.drain()
    assert fake.created == []


def _recording_rechecks(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """reconcile replaced by a recorder of its recheck_children argument, one per call."""
    reconciled: list[bool] = []

    def reconcile(
        namespace: str, name: str, *, fresh: bool = False, recheck_children: bool = False
    ) -> None:
        reconciled.append(recheck_children)

    monkeypatch.setattr(handlers, "reconcile", reconcile)
    return reconciled


def test_a_resync_whose_children_cannot_be_listed_still_reconciles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, listing = _resync_setup(monkeypatch)
    listing.error = kube.RejectedError("GET rolebindings", 403, "forbidden")
    reconciled = _recording_rechecks(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=handlers.__name__):
        handlers.resync_once()
        handlers.drain()
        handlers.resync_once()
        handlers.drain()
    assert reconciled == [False, False]
    warnings = [r.getMessage() for r in caplog.records if "children" in r.getMessage()]
    assert len(warnings) == 1 and "forbidden" in warnings[0]


def test_a_job_not_yet_checked_here_is_not_rechecked_by_the_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its first reconcile checks every child anyway; the resync adds no request for it."""
    fake, _ = _resync_setup(monkeypatch)
    fake.existing.discard("RoleBinding bot-trainer")
    reconciled = _recording_rechecks(monkeypatch)
    handlers.resync_once()
    handlers.drain()
    assert reconciled == [False]


RUNNING_1 = {**PREPARED, "phase": "Running", "attempt": 1}


@pytest.mark.parametrize("seen", [True, False])
def test_a_pod_gone_before_any_reconcile_listed_it_ended_keeps_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, seen: bool
) -> None:
    """Suspended: the pod stops (exit 10, complete checkpoint) and its object is removed before a
    reconcile lists it terminated; its DELETED event's last state is used once, so the attempt
    still records exit code 10. Without it (the event not seen) the code is unknown."""
    fake = FakeApi(job_body(spec={"suspend": True}, status=RUNNING_1), ALL)
    fake.install(monkeypatch)
    again: list[str] = []
    monkeypatch.setattr(handlers, "enqueue", lambda ns, name, ask=None: again.append(name))
    last = owned(pod("bot-1", phase="Failed", exit_code=10, deleting=True))
    fake.pods = []  # gone from the API already
    kind = "DELETED" if seen else "MODIFIED"
    asyncio.run(handlers.pod_event(type=kind, namespace="ml", labels={m.LABEL_JOB: "bot"},
                                   event={"object": last}))  # fmt: skip
    assert again == ["bot"]  # the event only queues the job
    again.clear()
    handlers.reconcile("ml", "bot")  # the worker's run
    status = fake.patches[-1]
    assert status["phase"] == "Suspended"
    (attempt,) = status["attempts"]
    assert attempt["reason"] == "Suspended"
    assert attempt.get("exitCode") == (10 if seen else None)
    assert again == (["bot"] if seen else [])  # the next pass sees the pod gone
    assert handlers._tombstones == {}


def test_a_restarts_deleted_pods_are_not_read_as_the_new_runs_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart deletes the previous run's bot-1 and starts again at attempt 1 with the same
    pod name: that pod's last state must not end the new run's attempt (the integration test
    saw an attempt 2 after a restart)."""
    # the new run prepares (its DELETED event came late, after the restart went on)
    fake = FakeApi(job_body(status={"phase": "Preparing", "run": 1}), ALL)
    fake.progress = None
    fake.install(monkeypatch)
    fake.pods = [owned(pod("bot-prepare", role="prepare", attempt=0, running=True))]
    old = owned(pod("bot-1", phase="Failed", exit_code=137, deleting=True))
    event(handlers.pod_event, type="DELETED", namespace="ml", labels={m.LABEL_JOB: "bot"},
          event={"object": old})  # fmt: skip
    assert all(not p.get("attempts") and p.get("attempt") in (None, 0) for p in fake.patches)
    assert not [c for c in fake.created if c.startswith("Pod")]
    assert handlers._tombstones == {}


def test_a_running_pods_deletion_event_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an ended container has an exit code worth keeping."""
    fake = FakeApi(job_body(status=RUNNING_1), ALL)
    fake.install(monkeypatch)
    monkeypatch.setattr(handlers, "reconcile", lambda ns, name, **_: None)
    alive = owned(pod("bot-1", phase="Running", running=True, deleting=True))
    event(handlers.pod_event, type="DELETED", namespace="ml", labels={m.LABEL_JOB: "bot"},
          event={"object": alive})  # fmt: skip
    assert handlers._tombstones == {}


def test_the_lock_table_holds_only_jobs_being_reconciled(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(job_body(status={"phase": "Succeeded"}), set())
    fake.install(monkeypatch)
    for name in ("a", "b", "c"):
        handlers.reconcile("ml", name)
    assert handlers._locks == {}


def test_a_status_patch_is_guarded_by_the_resource_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job changed between read and patch (409) is read again and patched from the new read."""
    body = job_body()
    body["metadata"]["resourceVersion"] = "5"
    fake = FakeApi(body, set())
    fake.install(monkeypatch)
    reads: list[str] = []

    def get_job(namespace: str, name: str) -> dict[str, Any]:
        reads.append(body["metadata"]["resourceVersion"])
        seen = {**body, "metadata": dict(body["metadata"])}
        body["metadata"]["resourceVersion"] = "6"  # someone writes right after our read
        return seen if len(reads) == 1 else body

    monkeypatch.setattr(kube, "get_job", get_job)
    handlers.reconcile("ml", "bot")
    assert reads == ["5", "6"]
    assert [p["phase"] for p in fake.patches] == ["Starting"]


# ------------------------------------------------------------- reconcile from the watches' indexes

KEY = ("ml", "bot")


def report(step: int) -> dict[str, Any]:
    """The progress ConfigMap as the watch delivers it after the trainer's report of ``step``."""
    progress = {"attempt": 1, "state": "running", "step": step, "total_steps": 20, "loss": 1.5}
    data = {"prepare.json": OK, "progress.json": json.dumps(progress)}
    owners = [{"kind": "FineTuneJob", "name": "bot", "uid": "uid-1"}]
    meta = {"name": "bot-progress", "resourceVersion": f"{100 + step}", "ownerReferences": owners}
    return {"metadata": meta, "data": data}


class Counting(FakeApi):
    """The fake API, counting reads, answering status patches with the job as written."""

    def __init__(self, job: dict[str, Any], existing: set[str]) -> None:
        super().__init__(job, existing)
        self.reads: list[str] = []

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        self.reads.append("get job")
        return self.job

    def list_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        self.reads.append("list pods")
        return self.pods

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"get {name}")
        return super().get_config_map(namespace, name)

    def exists(self, kind: str, namespace: str, name: str) -> bool:
        self.reads.append(f"get {name}")
        return super().exists(kind, namespace, name)

    def patch_job_status(
        self, namespace: str, name: str, patch: dict[str, Any], rv: str | None = None
    ) -> dict[str, Any]:
        super().patch_job_status(namespace, name, patch, rv)
        meta = self.job["metadata"]
        self.job = {**self.job, "metadata": {**meta, "resourceVersion": str(int(rv or 0) + 1)},
                    "status": {**self.job["status"], **patch}}  # fmt: skip
        return self.job


def indexes(job: dict[str, Any], pods: list[dict[str, Any]], cm: dict[str, Any] | None) -> None:
    """What kopf's indexes hold (one list per key, as its stores iterate)."""
    handlers._indexes.update(
        {
            handlers.JOBS: {KEY: [views.pack(job)]},
            handlers.PODS: {KEY: [views.pack(views.slim_pod(p)) for p in pods]} if pods else {},
            handlers.PROGRESS: {KEY: [views.pack(cm)]} if cm else {},
        }
    )
    handlers._indexes_ready.set()


def running(monkeypatch: pytest.MonkeyPatch) -> Counting:
    body = job_body(status=PREPARED)
    body["metadata"]["resourceVersion"] = "7"
    fake = Counting(body, ALL)
    fake.pods = [owned(pod("bot-1", phase="Running", running=True))]
    fake.pods[0]["metadata"]["resourceVersion"] = "50"
    fake.install(monkeypatch)
    handlers._children_ok.add(("ml", "bot", "uid-1"))  # checked on an earlier pass
    return fake


def test_a_progress_report_costs_one_status_patch_and_no_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = running(monkeypatch)
    indexes(fake.job, fake.pods, report(5))
    event(handlers.progress_event, namespace="ml", labels={m.LABEL_JOB: "bot"})
    assert fake.reads == []
    assert [p["progress"]["step"] for p in fake.patches] == [5]
    handlers.reconcile("ml", "bot")  # the same report again (a pod event): nothing to write
    assert fake.reads == [] and len(fake.patches) == 1


def test_our_own_patch_is_newer_than_a_lagging_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next report comes before the watch delivered our last status patch: the patch's
    answer is used (no GET, no 409)."""
    fake = running(monkeypatch)
    stale_job = fake.job
    indexes(stale_job, fake.pods, report(5))
    handlers.reconcile("ml", "bot")
    indexes(stale_job, fake.pods, report(6))  # the job index still shows resourceVersion 7
    handlers.reconcile("ml", "bot")
    assert fake.reads == []
    assert [p["progress"]["step"] for p in fake.patches] == [5, 6]
    assert fake.job["metadata"]["resourceVersion"] == "9"


def test_a_conflict_reads_the_job_from_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = running(monkeypatch)
    indexes(fake.job, fake.pods, report(5))
    fake.progress = report(5)["data"]
    fake.job = {**fake.job, "metadata": {**fake.job["metadata"], "resourceVersion": "8"}}
    handlers.reconcile("ml", "bot")  # someone else wrote the job: 409, then fresh reads
    assert fake.reads == ["get job", "list pods", "get bot-progress"]
    assert [p["progress"]["step"] for p in fake.patches] == [5]


def test_after_creating_a_pod_the_api_is_read_until_the_index_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = job_body(status=PREPARED)  # prepared, attempt 1 not started yet
    body["status"] = {**PREPARED, "phase": "Preparing", "attempt": 0}
    body["metadata"]["resourceVersion"] = "7"
    fake = Counting(body, ALL)
    fake.install(monkeypatch)
    handlers._children_ok.add(("ml", "bot", "uid-1"))
    owners = [{"kind": "FineTuneJob", "name": "bot", "uid": "uid-1"}]
    meta = {"name": "bot-progress", "resourceVersion": "1", "ownerReferences": owners}
    cm = {"metadata": meta, "data": fake.progress}
    indexes(fake.job, [], cm)
    created: list[str] = []
    create = fake.create_or_get

    def create_pod(child: dict[str, Any]) -> bool:
        if child["kind"] == "Pod":
            created.append(child["metadata"]["name"])
            fake.pods = [owned(pod(child["metadata"]["name"], phase="Pending"))]
            fake.pods[0]["metadata"]["resourceVersion"] = "60"
        return create(child)

    monkeypatch.setattr(kube, "create_or_get", create_pod)
    handlers.reconcile("ml", "bot")
    assert created == ["bot-1"] and KEY in handlers._unsettled
    fake.reads.clear()
    handlers.reconcile("ml", "bot")  # before the watch delivered the pod: the API says it exists
    assert "list pods" in fake.reads and created == ["bot-1"]
    assert KEY in handlers._unsettled
    indexes(fake.job, fake.pods, cm)  # the watch delivered it
    fake.reads.clear()
    handlers.reconcile("ml", "bot")
    assert KEY not in handlers._unsettled
    fake.reads.clear()
    handlers.reconcile("ml", "bot")
    assert "list pods" not in fake.reads


def test_the_resync_reads_afresh_only_the_jobs_whose_index_is_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = running(monkeypatch)
    cm = report(5)
    indexes(fake.job, fake.pods, cm)
    ours = handlers.Settings(namespaces=["ml"])
    monkeypatch.setattr(handlers, "operator_settings", lambda: ours)
    monkeypatch.setattr(kube, "list_jobs", lambda namespace: [fake.job])
    listed = {"pods": fake.pods, "configmaps": [cm]}
    asked: list[str] = []

    def list_labelled(namespace: str | None, plural: str, selector: str) -> list[dict[str, Any]]:
        asked.append(f"{plural} in {namespace} with {selector}")
        labels = {"namespace": "ml", "labels": {m.LABEL_JOB: "bot"}}
        return [{**o, "metadata": {**o["metadata"], **labels}} for o in listed[plural]]

    monkeypatch.setattr(kube, "list_labelled", list_labelled)
    monkeypatch.setattr(kube, "list_names", Listing(fake))  # every child there
    done: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        handlers, "reconcile", lambda ns, name, fresh, **_: done.append((name, fresh))
    )
    handlers.resync_once()
    handlers.drain()
    selector = f"{m.LABEL_JOB},app.kubernetes.io/managed-by=finetune-operator"
    assert asked == [f"pods in ml with {selector}", f"configmaps in ml with {selector}"]
    assert done == [("bot", False)]  # the index agrees with the API: no read per job
    listed["configmaps"] = [report(6)]  # a report the index does not have (yet)
    handlers.resync_once()
    handlers.drain()
    assert done[-1] == ("bot", False)  # behind, maybe only busy: trusted one round longer
    indexes(fake.job, fake.pods, report(6))
    listed["configmaps"] = [report(7)]
    handlers.resync_once()
    handlers.drain()
    assert done[-1] == ("bot", False)  # behind again, but it moved: the watch works
    handlers.resync_once()
    handlers.drain()
    assert done[-1] == ("bot", True)  # the index did not move for a whole round: missed


def test_a_list_is_read_a_page_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, str]] = []

    def request(method: str, path: str, body: Any = None, *, query: Any = None) -> dict[str, Any]:
        asked.append(dict(query))
        page = len(asked)
        more = {"continue": f"token-{page}"} if page < 3 else {}
        return {"metadata": more, "items": [{"n": page}]}

    monkeypatch.setattr(kube, "request", request)
    items = list(kube.list_labelled("ml", "pods", "a=b"))
    assert items == [{"n": 1}, {"n": 2}, {"n": 3}]
    limit = str(kube.PAGE)
    assert asked == [
        {"labelSelector": "a=b", "limit": limit},
        {"labelSelector": "a=b", "limit": limit, "continue": "token-1"},
        {"labelSelector": "a=b", "limit": limit, "continue": "token-2"},
    ]


def test_a_queued_job_waits_from_its_first_add() -> None:
    """The wait the log reports is from the add (not from import): each add stamps its own time,
    and a merged add keeps the earliest."""
    handlers.enqueue("ml", "a")
    first = handlers._queue.get(timeout=0)
    assert first is not None
    handlers._queue.done(first[0])
    handlers.enqueue("ml", "a")
    handlers.enqueue("ml", "a", handlers.Ask(recheck_children=True))
    second = handlers._queue.get(timeout=0)
    assert second is not None and second[1].since > first[1].since
    assert second[1].recheck_children
    handlers._queue.done(second[0])

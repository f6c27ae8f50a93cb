"""Thin kopf handlers: read → derive → build → apply → patch status once.

Every trigger (job created/resumed/changed, any event of a pod the operator made or of a job's
progress ConfigMap or other child, the job's own wake-up, the slow safety-net resync) only adds
the job's key to one de-duplicating work queue (``workqueue``); a few worker threads run the same
``reconcile`` for each key, which reads the job, its pods and its progress ConfigMap (from the
watches' indexes), derives the new status (pure), makes the few API calls that status asks for,
and patches ``.status`` only when it changed. kopf's event loop never waits for a reconcile, and a
burst of events of one job is one reconcile. Nothing sleeps: a backoff, a TTL, a deadline or a
retry after an API error is a per-job wake-up (``lifecycle.wake_at``). Pod names are
deterministic and creation is create-or-get, so an operator restart never duplicates a pod.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from finetune_operator import builders as b
from finetune_operator import kube, kueue, leader, metrics, planner, security, views, wakeups
from finetune_operator import lifecycle as lc
from finetune_operator import models as m
from finetune_operator.settings import Settings
from finetune_operator.workqueue import Timings, WorkQueue

log = logging.getLogger(__name__)

RESTART_FIELD = ("metadata", "annotations", m.RESTART_ANNOTATION)
RETRY_FIELD = ("metadata", "annotations", m.RETRY_ANNOTATION)


@functools.cache
def operator_settings() -> Settings:
    """The operator's settings, read from the environment at first use (startup), not import."""
    return Settings()


@functools.cache
def allowlists() -> security.Allowlists:
    """The admin's allowlists (security.py), from the settings."""
    return security.allowlists(operator_settings())


# one lock per job while someone reconciles it (the work queue already runs a job on one thread
# at a time; the lock keeps that true for direct callers too): an entry lives as long as it has
# users, so the table holds only the jobs being reconciled now
_locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}
_locks_guard = threading.Lock()


@contextmanager
def _job_lock(namespace: str, name: str) -> Iterator[None]:
    key = (namespace, name)
    with _locks_guard:
        lock, users = _locks.get(key, (threading.Lock(), 0))
        _locks[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _locks_guard:
            lock, users = _locks[key]
            if users == 1:
                del _locks[key]
            else:
                _locks[key] = (lock, users - 1)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own bookkeeping under our API group; watches that cannot go silent; no peering."""
    settings.persistence.finalizer = f"{m.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=m.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=m.GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = operator_settings().watch_server_timeout
    settings.watching.client_timeout = operator_settings().watch_client_timeout
    settings.watching.connect_timeout = 30
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    # every handler and index is async and does no I/O (it only queues a key): kopf's thread
    # pool is idle
    settings.execution.max_workers = 1


# ---------------------------------------------------------------------------------- work queue


@dataclass(frozen=True)
class Ask:
    """What the adds of a queued job asked for: fresh reads (the resync saw its indexes miss an
    event), re-checking its children (one was deleted); since when it waits (monotonic)."""

    fresh: bool = False
    recheck_children: bool = False
    since: float = field(default_factory=time.monotonic)


def _merged(a: Ask, b: Ask) -> Ask:
    return Ask(a.fresh or b.fresh, a.recheck_children or b.recheck_children, min(a.since, b.since))


_queue: WorkQueue[views.Key, Ask] = WorkQueue(_merged)
_timings = Timings()  # logged by each resync round


def enqueue(namespace: str, name: str, ask: Ask | None = None) -> None:
    """Reconcile the job soon, on a worker (never on the caller's thread or kopf's loop)."""
    _queue.add((namespace, name), ask or Ask())  # Ask() now: it carries the time of the add


def _retry_delay(exc: kube.KubeError) -> float | None:
    """Seconds until a reconcile that failed with ``exc`` is tried again; None: not retried (the
    request itself was refused; the next change of the job brings it back)."""
    if isinstance(exc, kube.RejectedError):
        return 30.0 if exc.status == 403 else None  # RBAC may be fixed meanwhile: retry slowly
    return 30.0 if exc.status == 401 else 5.0


def _run(queue: WorkQueue[views.Key, Ask], key: views.Key, ask: Ask) -> None:
    """One queued reconcile; an API error is retried by a wake-up, never lost."""
    start = time.monotonic()
    try:
        reconcile(*key, fresh=ask.fresh, recheck_children=ask.recheck_children)
    except kube.KubeError as exc:
        delay = _retry_delay(exc)
        log.warning("reconcile %s/%s: %s%s", *key, exc, "" if delay else " (not retried)")
        if delay is not None:
            _wakeups.schedule(key, datetime.now(UTC) + timedelta(seconds=delay))
    except Exception:  # one job's bug never stops the others
        log.exception("reconcile %s/%s failed", *key)
    finally:
        queue.done(key)
        _timings.record(start - ask.since, time.monotonic() - start)


def _work(queue: WorkQueue[views.Key, Ask]) -> None:
    while (item := queue.get()) is not None:
        _run(queue, *item)


def drain() -> int:
    """Run every queued reconcile on this thread until none is left (tests; a worker-less
    caller); how many ran."""
    ran = 0
    queue = _queue
    while (item := queue.get(timeout=0)) is not None:
        _run(queue, *item)
        ran += 1
    return ran


# ------------------------------------------------------------------------------------ triggers


@kopf.on.resume(m.GROUP, m.VERSION, m.PLURAL)
@kopf.on.create(m.GROUP, m.VERSION, m.PLURAL)
@kopf.on.update(m.GROUP, m.VERSION, m.PLURAL, field="spec")
async def job_changed(name: str, namespace: str | None, **_: Any) -> None:
    _indexes_ready.set()
    enqueue(namespace or "default", name)


# An annotation does not bump metadata.generation and is no part of ``spec``: watch the restart
# and retry annotations on their own (a tuple path, since the key holds dots and a slash).
@kopf.on.update(m.GROUP, m.VERSION, m.PLURAL, field=RETRY_FIELD)
@kopf.on.update(m.GROUP, m.VERSION, m.PLURAL, field=RESTART_FIELD)
async def restart_requested(name: str, namespace: str | None, **_: Any) -> None:
    _indexes_ready.set()
    enqueue(namespace or "default", name)


def _is_progress(name: str, labels: Mapping[str, str], **_: Any) -> bool:
    return name == f"{labels.get(m.LABEL_JOB)}-progress"


# the trainer's reports reach the status when they are written, not at the next poll
@kopf.on.event(
    "", "v1", "configmaps", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY}, when=_is_progress
)
async def progress_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    _indexes_ready.set()
    enqueue(namespace or "default", labels[m.LABEL_JOB])


# ------------------------------------------------------------------ what the watches already know

# kopf indexes (views.py says when they are trusted): the jobs, their pods and their progress
# ConfigMaps, keyed by (namespace, job name), from the watches the handlers need anyway. kopf
# fills every index from its first listing before it calls any handler. The indexers are async (no
# I/O; kopf calls a sync one on its thread pool, a hop per event).
JOBS, PODS, PROGRESS = "ftj_jobs", "ftj_pods", "ftj_progress"
_indexes: dict[str, Mapping[views.Key, Any]] = {}
# set by the first handler kopf calls (the indexes are filled by then); until then the threads
# of their own (resync, wake-ups) read the API
_indexes_ready = threading.Event()


@kopf.index(m.GROUP, m.VERSION, m.PLURAL, id=JOBS)
async def index_job(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[views.Key, views.Packed]:
    return {(namespace or "default", name): views.pack(views.slim(body))}


@kopf.index("", "v1", "pods", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY}, id=PODS)
async def index_pod(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[views.Key, views.Packed]:
    return {(namespace or "default", labels[m.LABEL_JOB]): views.pack(views.slim_pod(body))}


@kopf.index("", "v1", "configmaps", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY},
            when=_is_progress, id=PROGRESS)  # fmt: skip
async def index_progress(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[views.Key, views.Packed]:
    return {(namespace or "default", labels[m.LABEL_JOB]): views.pack(views.slim(body))}


def _indexed(index: str, key: views.Key) -> list[views.Packed] | None:
    """The objects an index holds under ``key`` ([] for none); None while the indexes cannot be
    trusted at all (not filled yet, or not running under kopf)."""
    found = _indexes.get(index)
    if found is None or not _indexes_ready.is_set():
        return None
    try:
        return list(found[key])  # one C-level copy: kopf's thread may change the store later
    except KeyError:
        return []


_written = views.Written()  # our own status patches, until the job index has them
_unsettled = views.Unsettled()  # jobs whose pods or reports we just wrote


def _job_body(key: views.Key, fresh: bool) -> dict[str, Any]:
    """The job: from the index (or our own newer patch answer), else from the API."""
    indexed = None if fresh else _indexed(JOBS, key)
    if indexed is not None:
        body, trusted = _written.pick(key, views.unpack(indexed[0]) if indexed else None)
        if trusted and body is not None:
            return body
    return kube.get_job(*key)


def _children_of(job: m.FineTuneJob, fresh: bool) -> views.Children:
    """The job's pods and progress ConfigMap: from the indexes unless the caller wants fresh
    reads, the indexes are not ready, or this operator has just written some of them."""
    key = (job.namespace, job.name)
    pods, progress = _indexed(PODS, key), _indexed(PROGRESS, key)
    indexed = None
    if pods is not None and progress is not None:
        indexed = views.Children(
            tuple(map(views.unpack, pods)), views.unpack(progress[0]) if progress else None
        )
        if not fresh and key not in _unsettled:
            return indexed
    api = views.Children(
        tuple(map(views.slim_pod, kube.list_pods(*key))),
        kube.get_config_map(job.namespace, b.progress_name(job)),
    )
    if indexed is not None:
        _unsettled.read(key, indexed, api)
    return api


# No kopf.timer: kopf puts a finalizer on every object with a timer or daemon, and a job could
# then not be deleted while the operator is down. Per-job wake-ups (backoff, TTL, deadlines) and a
# slow safety-net resync run on threads of their own.
_stop = threading.Event()
_wakeups = wakeups.Wakeups(enqueue)


_elector: leader.Elector | None = None


def _catch_up() -> None:
    """Newly elected: every job may have changed while another replica led (or none did)."""
    threading.Thread(target=_resync_logged, name="catch-up", daemon=True).start()


def leading() -> bool:
    """Whether this replica may act (always, without leader election)."""
    return _elector is None or _elector.leading.is_set()


@kopf.on.startup()
def start_resync(**kwargs: Any) -> None:
    global _elector, _queue
    _stop.clear()
    _queue = WorkQueue(_merged)  # a fresh one: a stopped operator's was shut down
    _indexes.update({name: kwargs[name] for name in (JOBS, PODS, PROGRESS)})  # filled later
    ours = operator_settings()
    if ours.leader_election:
        namespace = ours.lease_namespace or (ours.namespaces or ["default"])[0]
        _elector = leader.Elector(
            namespace,
            ours.lease_name,
            f"{socket.gethostname()}-{os.getpid()}",  # the pod's name, unique per replica
            duration=ours.lease_duration_seconds,
            on_elected=_catch_up,
        )
        threading.Thread(target=_elector.run, args=(_stop,), name="leader", daemon=True).start()
    threading.Thread(target=_resync_forever, name="resync", daemon=True).start()
    threading.Thread(target=_wakeups.run, args=(_stop,), name="wakeups", daemon=True).start()
    for i in range(ours.reconcile_workers):
        threading.Thread(target=_work, args=(_queue,), name=f"reconcile-{i}", daemon=True).start()


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    _stop.set()
    _queue.shut_down()
    if _elector is not None:
        _elector.release()


def _resync_forever() -> None:
    while not _stop.wait(operator_settings().resync_seconds):
        _resync_logged()


def _resync_logged() -> None:
    try:
        resync_once()
    except Exception:
        log.exception("periodic resync failed")


_list_errors: dict[str | None, str] = {}


_SUMMARY = (m.RESTART_ANNOTATION, m.RETRY_ANNOTATION, m.RESTART_STATUS_FIELD, m.RETRY_STATUS_FIELD)


def _list_jobs(namespace: str | None) -> list[dict[str, Any]]:
    """One namespace's jobs (``views.job_summary``: a page at a time, never all bodies at
    once); a namespace that cannot be listed (403, gone) is logged once per change of its error
    and skipped, never blocking the others."""
    where = namespace or "all namespaces"
    try:
        jobs = [views.job_summary(item, _SUMMARY) for item in kube.list_jobs(namespace)]
    except kube.KubeError as exc:
        if _list_errors.get(namespace) != exc.detail:
            log.warning("cannot list FineTuneJobs in %s: %s", where, exc)
        _list_errors[namespace] = exc.detail
        return []
    if _list_errors.pop(namespace, None) is not None:
        log.info("FineTuneJobs in %s can be listed again", where)
    return jobs


_SELECTOR = ",".join([m.LABEL_JOB, *(f"{k}={v}" for k, v in b.MANAGED_BY.items())])


def _listed_children(namespace: str | None) -> dict[views.Key, views.Versions] | None:
    """Every job's pods and progress ConfigMap in one namespace (None: all), as names and
    resourceVersions, from a LIST each; None when they cannot be listed (every job is then read
    afresh)."""
    try:
        return views.listed_versions(
            kube.list_labelled(namespace, "pods", _SELECTOR),
            kube.list_labelled(namespace, "configmaps", _SELECTOR),
            m.LABEL_JOB,
        )
    except kube.KubeError as exc:
        log.info("resync of %s reads every job afresh: %s", namespace or "all namespaces", exc)
        return None


_drift = views.Drift()


def _drifted(item: dict[str, Any], listed: dict[views.Key, views.Versions] | None) -> bool:
    """Whether the indexes missed a watch event of a job or its children (``views.Drift``):
    that job is reconciled from fresh reads."""
    meta = item.get("metadata") or {}
    key = (meta["namespace"], meta["name"])
    jobs, pods, progress = _indexed(JOBS, key), _indexed(PODS, key), _indexed(PROGRESS, key)
    if listed is None or jobs is None or pods is None or progress is None:
        return True
    indexed = ([j.rv for j in jobs], views.packed_versions(pods, progress[0] if progress else None))
    return _drift.stuck(key, indexed, ([views.resource_version(item)], listed.get(key, views.NONE)))


def resync_once() -> None:
    """Reconcile every job that is not finished (or has a TTL to honour), namespace by
    namespace: from the indexes where they agree with one LIST each of the namespace's jobs, pods
    and ConfigMaps, from fresh reads of the API where they do not; a job whose memoised children
    are not all there is reconciled with its children checked again (a deletion whose watch event
    never came). The reconciles are queued, not waited for."""
    runs, wait, longest, took = _timings.take()
    log.info(
        "work queue: %d reconciles since the last resync (waited %.2f s on average, %.2f s at "
        "most; took %.3f s on average), %d waiting, %d running",
        runs, wait, longest, took, len(_queue), _queue.busy(),
    )  # fmt: skip
    if not leading():
        return
    namespaces: list[str | None] = [*operator_settings().namespaces] or [None]
    listed = [(ns, _list_jobs(ns)) for ns in namespaces]
    metrics.observe_jobs([item for _, jobs in listed for item in jobs])
    queued, drifted = 0, 0
    for ns, jobs in listed:
        due = [item for item in jobs if _resync_due(item)]
        children = _listed_children(ns) if due else {}
        present = _present_children(ns) if due else None
        for item in due:
            meta = item.get("metadata") or {}
            phase = (item.get("status") or {}).get("phase")
            recheck = present is not None and _children_missing(meta, phase, present)
            if recheck:
                log.warning(
                    "%s/%s: a child of the job is missing and no deletion was seen; checking its "
                    "children again", meta["namespace"], meta["name"],
                )  # fmt: skip
            fresh = _drifted(item, children)
            drifted += fresh
            queued += 1
            enqueue(meta["namespace"], meta["name"], Ask(fresh=fresh, recheck_children=recheck))
    _drift.round_done()
    if drifted:
        log.info(
            "resync: %d of %d jobs read afresh (their indexes missed a watch event)",
            drifted,
            queued,
        )


def _resync_due(item: dict[str, Any]) -> bool:
    """Whether the resync looks at a listed job: unfinished, or finished with a TTL, a restart
    or a retry asked for."""
    meta, spec = item.get("metadata") or {}, item.get("spec") or {}
    status = item.get("status") or {}
    annotations = meta.get("annotations") or {}
    return not (
        status.get("phase") in m.Phase.TERMINAL
        and spec.get("ttlSecondsAfterFinished") is None
        and annotations.get(m.RESTART_ANNOTATION) == status.get(m.RESTART_STATUS_FIELD)
        and annotations.get(m.RETRY_ANNOTATION) == status.get(m.RETRY_STATUS_FIELD)
    )


# The children the memo vouches for, by kind; the trainer config only while a pod may read it.
_MEMO_KINDS = ("ServiceAccount", "Role", "RoleBinding")
_CONFIG_PHASES = frozenset({m.Phase.PREPARING, m.Phase.STARTING, m.Phase.RUNNING})
_CHILD_SELECTOR = ",".join([*(f"{k}={v}" for k, v in b.MANAGED_BY.items()), m.LABEL_JOB])
_children_errors: dict[str | None, str] = {}


def _present_children(namespace: str | None) -> set[tuple[str, str, str]] | None:
    """(kind, namespace, name) of the jobs' ServiceAccounts, Roles, RoleBindings and ConfigMaps:
    one metadata-only LIST per kind, whatever the number of jobs. None when they cannot be
    listed (logged once per change of the error; the resync goes on without the check)."""
    try:
        present = {
            (kind, ns, name)
            for kind in (*_MEMO_KINDS, "ConfigMap")
            for ns, name in kube.list_names(kind, namespace, _CHILD_SELECTOR)
        }
    except kube.KubeError as exc:
        if _children_errors.get(namespace) != exc.detail:
            log.warning("cannot list the jobs' children in %s: %s", namespace or "all", exc)
        _children_errors[namespace] = exc.detail
        return None
    _children_errors.pop(namespace, None)
    return present


def _children_missing(
    meta: dict[str, Any], phase: str | None, present: set[tuple[str, str, str]]
) -> bool:
    """Whether the memo says a job's children were checked while one of them is gone. A job not
    in the memo has them checked on its next reconcile anyway."""
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    if (namespace, name, meta.get("uid", "")) not in _children_ok:
        return False
    wanted = [(kind, b.trainer_account_name_for(name)) for kind in _MEMO_KINDS]
    if phase in _CONFIG_PHASES:
        wanted.append(("ConfigMap", b.config_map_name_for(name)))
    return any((kind, namespace, child) not in present for kind, child in wanted)


@kopf.on.event("", "v1", "pods", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})
async def pod_event(
    type: str | None,  # kopf passes the watch event type by this name
    namespace: str | None,
    labels: Mapping[str, str],
    event: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    _indexes_ready.set()
    ns, job = namespace or "default", labels[m.LABEL_JOB]
    if type == "DELETED" and leading():
        _bury(ns, job, (event or {}).get("object"))
    enqueue(ns, job)


# The last state of a job's pods whose DELETED event came, read once by the job's next
# reconcile: a pod deleted for a suspend can be gone before any reconcile lists it terminated,
# and its exit code (10: stopped with a complete checkpoint) would be lost from the attempt.
_tombstones: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
_tombstones_lock = threading.Lock()


def _bury(namespace: str, job: str, pod: object) -> None:
    """Keep a deleted pod's last state if its container had ended (an exit code to record)."""
    if not isinstance(pod, dict) or not lc.pod_state(pod).terminated:
        return
    name = str((pod.get("metadata") or {}).get("name", ""))
    with _tombstones_lock:
        _tombstones.setdefault((namespace, job), {})[name] = pod


_IN_FLIGHT = frozenset({m.Phase.STARTING, m.Phase.RUNNING, m.Phase.SUSPENDING})


def _of_the_attempt_in_flight(job: m.FineTuneJob, pod: dict[str, Any]) -> bool:
    """Only a training pod of the attempt the status says runs (or stops) is worth its last
    state: an earlier run's pod of the same name (a restart deletes them all and starts again
    at attempt 1) would read as the new run's attempt ending."""
    status = job.status
    return status.phase in _IN_FLIGHT and lc.attempt_of(pod) == status.attempt > 0


def _exhume(namespace: str, job: str) -> list[dict[str, Any]]:
    """The job's buried pods, forgotten as they are read."""
    with _tombstones_lock:
        return list(_tombstones.pop((namespace, job), {}).values())


# A child deleted by hand is created again at once, and the memo of checked children forgets it.
def _is_config(name: str, labels: Mapping[str, str], **_: Any) -> bool:
    return name == b.config_map_name_for(str(labels.get(m.LABEL_JOB)))


@kopf.on.event("", "v1", "configmaps", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY},
               when=_is_config)  # fmt: skip
@kopf.on.event("", "v1", "serviceaccounts", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})
@kopf.on.event("", "v1", "persistentvolumeclaims",
               labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})  # fmt: skip
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles",
               labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})  # fmt: skip
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings",
               labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})  # fmt: skip
async def child_event(
    type: str | None,  # kopf passes the watch event type by this name
    namespace: str | None,
    labels: Mapping[str, str],
    body: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    if type != "DELETED":
        return
    meta = (body or {}).get("metadata") or {}
    log.info("%s %s/%s deleted: checking the children of job %s", (body or {}).get("kind"),
             namespace, meta.get("name"), labels.get(m.LABEL_JOB))  # fmt: skip
    # the memo is cleared by the worker, under the job's lock (``reconcile``); a reconcile of
    # the job in flight now runs once more after it ends (the queue's dirty set)
    enqueue(namespace or "default", labels[m.LABEL_JOB], Ask(recheck_children=True))


# async: the liveness answer must not wait for a free worker thread (all of them may be busy with
# slow reconciles on a loaded apiserver; the kubelet then killed a working operator)
@kopf.on.probe(id="jobs")
async def probe(**_: Any) -> str:
    return "ok"


# ----------------------------------------------------------------------------------- reconcile


def _missing_refs(job: m.FineTuneJob) -> tuple[str, str] | None:
    """(reason, message) for what stops a pod: the admin's allowlists, then the first
    referenced object that does not exist."""
    refused = security.violations(job, allowlists())
    if refused:
        return m.Reason.NOT_ALLOWED, "; ".join(refused)
    for claim in b.referenced_pvcs(job):
        if not kube.exists("PersistentVolumeClaim", job.namespace, claim):
            return m.Reason.PVC_NOT_FOUND, lc.missing_claim(claim)
    ref = job.spec.dataset.config_map
    if ref is not None and not kube.exists("ConfigMap", job.namespace, ref.name):
        return m.Reason.CONFIG_MAP_NOT_FOUND, f'The ConfigMap "{ref.name}" does not exist.'
    return None


# Jobs (namespace, name, uid) whose ServiceAccount, Role, RoleBinding and output claim this
# process has made or found: checked on a job's first reconcile here (a POST, and a GET on 409,
# each), then again only after a watch event says one of them was deleted (``child_event``), so a
# progress report or a resync costs no request for them. The progress ConfigMap is read by every
# reconcile anyway; the trainer config is checked while a pod waits for it.
_children_ok: set[tuple[str, str, str]] = set()


def _forget_job(namespace: str, name: str) -> None:
    """A job deleted (or being deleted): its wake-ups, memo, buried pods, remembered status
    patch and unsettled mark go."""
    _wakeups.cancel((namespace, name))
    _forget_children(namespace, name)
    _exhume(namespace, name)
    _written.forget((namespace, name))
    _unsettled.forget((namespace, name))


def _forget_children(namespace: str, name: str) -> None:
    # list() copies the set in one step: other jobs' threads add to it meanwhile
    for key in [k for k in list(_children_ok) if k[:2] == (namespace, name)]:
        _children_ok.discard(key)


def _ensure_children(
    job: m.FineTuneJob, pods: list[dict[str, Any]], progress_exists: bool
) -> list[str]:
    """Create whatever of the job's children is missing (deleted by hand, or never made); the
    names of those created now."""
    key = (job.namespace, job.name, job.uid)
    checked = key in _children_ok
    bodies = [] if checked else [b.service_account(job), b.role(job), b.role_binding(job)]
    if not progress_exists:
        bodies.append(b.progress_config_map(job))
        _unsettled.wrote((job.namespace, job.name))
    pvc = b.output_pvc(job)
    if pvc is not None and not checked:
        bodies.append(pvc)
    service = b.nodes_service(job)
    if service is not None:
        bodies.append(service)
    created = [f"{x['kind']} {x['metadata']['name']}" for x in bodies if kube.create_or_get(x)]
    # the trainer config: read while a pod waits to start with it, and on the first check of a
    # running pod's children (its kubelet keeps re-mounting the volume: a missing ConfigMap makes
    # FailedMount warnings, though the files it read at start stay)
    live = [
        s
        for s in map(lc.pod_state, pods)
        if s.kind in ("pending", "unschedulable", "gated", "running") and not s.deleting
    ]
    waiting = [s for s in live if s.kind != "running"]
    check_config = bool(waiting) or (bool(live) and not checked)
    if check_config and not kube.exists("ConfigMap", job.namespace, b.config_map_name(job)):
        attempt = (waiting or live)[0].attempt
        kube.create_or_get(_config_map(job, attempt or job.status.attempt + 1, attempt > 0))
        created.append(f"ConfigMap {b.config_map_name(job)}")
    _children_ok.add(key)
    return created


def _config_map(job: m.FineTuneJob, attempt: int, train: bool) -> dict[str, Any]:
    """The trainer config ConfigMap for the prepare pod or training attempt ``attempt``."""
    tpl = job.spec.pod_template or m.PodTemplate()
    gpus = job.spec.resources.gpus
    hint = job.spec.resources.gpu_memory_mib
    nodes = kube.list_nodes() if (gpus > 0 and hint is None) else []
    gpu_mem = planner.gpu_memory_mib(nodes, gpus, dict(tpl.node_selector), hint)
    batch = lc.batch_for_attempt(job) if train else None
    return b.config_map(
        job, b.trainer_config(job, max(1, attempt), batch, gpu_mem, operator_settings())
    )


def _start_pod(job: m.FineTuneJob, acts: lc.Actions) -> None:
    _unsettled.wrote((job.namespace, job.name))
    if acts.create_prepare:
        kube.apply_config_map(_config_map(job, job.status.attempt + 1, False))
        kube.create_or_get(b.prepare_pod(job, operator_settings()))
    elif acts.create_export:
        kube.create_or_get(b.export_pod(job, operator_settings()))
    elif acts.create_train is not None:
        kube.apply_config_map(_config_map(job, acts.create_train, True))
        for pod in b.train_pods(job, acts.create_train, operator_settings()):
            kube.create_or_get(pod)  # every node of the attempt (those there already: 409)


def _act(
    body: dict[str, Any],
    job: m.FineTuneJob,
    new: m.FineTuneJobStatus,
    acts: lc.Actions,
    *,
    pods: list[dict[str, Any]],
    progress_exists: bool,
    now: datetime,
) -> m.FineTuneJobStatus:
    """Ensure the children and create the pod the new status asks for; a child the apiserver
    refuses (4xx) fails the job with its message. The status to publish."""
    creating = acts.create_prepare or acts.create_export or acts.create_train is not None
    missing = _missing_refs(job) if creating else None
    if missing is not None:
        return lc.failed_status(new, job.generation, missing[0], missing[1], now)
    if not lc.children_needed(new):
        return new
    current = job.model_copy(update={"status": new})  # the run (work directory) of the new status
    try:
        created = _ensure_children(current, pods, progress_exists)
        if creating:
            _start_pod(current, acts)
    except kube.ChildRejectedError as exc:
        reason = m.Reason.NOT_ALLOWED if exc.status == 403 else m.Reason.BAD_SPEC
        return lc.failed_status(new, job.generation, reason, lc.rejected(exc.kind, exc.detail), now)
    except kube.NotOwnedError as exc:
        return lc.failed_status(new, job.generation, m.Reason.NAME_CONFLICT, str(exc), now)
    if job.status.phase is not None:  # the first pass creates them; later ones re-create
        for what in created:
            message = f"{what} was missing and has been created again."
            kube.emit_event(body, "Warning", m.Reason.CHILD_RECREATED, message)
    return new


def reconcile(
    namespace: str, name: str, *, fresh: bool = False, recheck_children: bool = False
) -> None:
    """Bring one job one step closer to its spec; safe to run any number of times.

    ``fresh``: read the job and its children from the API, not from the indexes.
    ``recheck_children``: a child was deleted; check them all again. The memo is cleared under
    the job's lock: cleared before it, a reconcile already in flight (which had read the memo
    before the deletion) would mark the children checked again at its end, and the deleted ones
    were never re-created (seen in the storm test: a ConfigMap and a RoleBinding stayed gone).
    """
    if not leading():  # the leader acts; this replica only keeps its watches warm
        if recheck_children:  # the memo must not outlive the deletion into a later term here
            _forget_children(namespace, name)
        return
    with _job_lock(namespace, name):
        if recheck_children:
            _forget_children(namespace, name)
        # a status that must be on the resource before the next step (status.data and
        # status.plan before the training pod) is published, then the job is read again; a job
        # that changed between read and status patch (409) is read again too, from the API
        for _ in range(3):
            try:
                if not _reconcile_once(namespace, name, fresh):
                    return
            except kube.ConflictError as exc:
                log.info("reconcile %s/%s again: %s", namespace, name, exc)
                fresh = True


def _reconcile_once(namespace: str, name: str, fresh: bool) -> bool:
    """One pass; True when the next step waits for the status just published."""
    key = (namespace, name)
    try:
        body = _job_body(key, fresh)
    except kube.NotFoundError:
        _forget_job(namespace, name)
        return False
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        _forget_job(namespace, name)
        return False
    now = datetime.now(UTC)
    old_raw: dict[str, Any] = dict(body.get("status") or {})
    try:
        job = m.parse_job(body)
    except ValidationError as exc:
        _bad_spec(body, old_raw, exc, now)
        return False
    if lc.ttl_expired(job, now):
        log.info("deleting %s/%s: ttlSecondsAfterFinished passed", namespace, name)
        kube.delete_job(namespace, name)
        return False
    children = _children_of(job, fresh)
    names = {(p.get("metadata") or {}).get("name") for p in children.pods}
    gone = [
        p
        for p in _exhume(namespace, name)
        if p["metadata"]["name"] not in names and _of_the_attempt_in_flight(job, p)
    ]
    pods = [p for p in [*children.pods, *gone] if security.owned_by(p, job.uid)]
    # a progress ConfigMap not ours (a namesake made by someone else, or an earlier job's awaiting
    # the garbage collector) is never read as this job's reports, and creating ours fails
    # NameConflict
    cm = children.progress if security.owned_by(children.progress or {}, job.uid) else None
    reports: dict[str, str] = (cm or {}).get("data") or {}
    progress = lc.parse_progress(reports.get(b.PROGRESS_KEY))
    prepared = lc.parse_prepare(reports.get(b.PREPARE_KEY))
    new = lc.derive_status(
        job,
        pods,
        progress,
        prepared,
        now,
        max_backoff=operator_settings().retry_max_backoff_seconds,
        admission=_admission_message(namespace, pods),
    )
    acts = lc.next_actions(job, new, pods, now)
    if acts.reset_progress or acts.reset_prepare or acts.delete_pods:
        _unsettled.wrote(key)  # the indexes are behind until the watches deliver these writes
    if acts.reset_progress:  # a restart: the previous run's reports must not count
        kube.clear_config_map_keys(namespace, b.progress_name(job), (b.PROGRESS_KEY, b.PREPARE_KEY))
    elif acts.reset_prepare:  # a retry of the prepare stage: its failure must not count again
        kube.clear_config_map_keys(namespace, b.progress_name(job), (b.PREPARE_KEY,))
    new = _act(body, job, new, acts, pods=pods, progress_exists=cm is not None, now=now)
    for pod in acts.delete_pods:
        kube.delete_pod(namespace, pod)
    _publish(body, job.status, new, old_raw, now)
    wake = lc.wake_at(job, new, pods, now)
    if wake is not None:
        _wakeups.schedule((namespace, name), wake)
    if gone:  # the next pass sees them gone (no event will come for them again)
        enqueue(namespace, name)
    return acts.publish_first


def _admission_message(namespace: str, pods: list[dict[str, Any]]) -> str | None:
    """Why Kueue has not admitted a gated pod's group yet, from its Workload. Best effort: the
    phase (Queued) comes from the gate alone, so a Workload that cannot be read (no Kueue, no
    RBAC, a transient error) only leaves the message generic."""
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        group = labels.get(kueue.LABEL_POD_GROUP)
        if not (kueue.gated(pod) and group):
            continue
        try:
            workload = kube.get_workload(kueue.WORKLOAD_API_VERSION, namespace, group)
        except kube.KubeError as exc:
            log.info("cannot read Kueue Workload %s/%s: %s", namespace, group, exc)
            return None
        return kueue.admission_message(workload)
    return None


def _publish(
    body: dict[str, Any],
    old: m.FineTuneJobStatus,
    new: m.FineTuneJobStatus,
    old_raw: dict[str, Any],
    now: datetime,
) -> None:
    meta = body.get("metadata") or {}
    new_raw = m.dump(new)
    patch = lc.merge_patch(old_raw, new_raw)
    if patch:
        rv = meta.get("resourceVersion")
        written = kube.patch_job_status(meta["namespace"], meta["name"], patch, rv)
        if written:  # the next pass may come before the watch delivers it
            _written.remember((meta["namespace"], meta["name"]), written)
        metrics.observe_status(meta["namespace"], meta["name"], old_raw, new_raw, now)
    for kind, reason, message in lc.transition_events(old, new):
        kube.emit_event(body, kind, reason, message)


def _bad_spec(
    body: dict[str, Any], old_raw: dict[str, Any], exc: ValidationError, now: datetime
) -> None:
    try:
        old = m.FineTuneJobStatus.model_validate(old_raw)
    except ValidationError:
        old = m.FineTuneJobStatus()
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    message = f"invalid spec at {where}: {err['msg']}"
    generation = int((body.get("metadata") or {}).get("generation", 1))
    new = lc.failed_status(old, generation, m.Reason.BAD_SPEC, message, now)
    _publish(body, old, new, old_raw, now)

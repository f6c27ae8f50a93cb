"""Thin kopf handlers: read → derive → build → apply → patch status once.

Every trigger (job created/resumed/changed, the periodic resync, any event of a pod the operator
made) runs the same ``reconcile``, which re-reads the job, lists its pods, reads the progress
ConfigMap, derives the new status (pure), makes the few API calls that status asks for, and
patches ``.status`` only when it changed. Nothing sleeps: backoff waits are a time in
``status.retryAfter`` that the periodic resync looks at. Pod names are deterministic and creation is
create-or-get, so an operator restart never duplicates a pod.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from finetune_operator import builders as b
from finetune_operator import gitops, kube, metrics, planner, security
from finetune_operator import models as m
from finetune_operator import status as st
from finetune_operator.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = Settings()
ALLOWLISTS = security.allowlists(SETTINGS)
RESTART_FIELD = ("metadata", "annotations", gitops.RESTART_ANNOTATION)
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf's own bookkeeping under our API group; watches that cannot go silent; no peering."""
    settings.persistence.finalizer = f"{m.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=m.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=m.GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = SETTINGS.watch_server_timeout
    settings.watching.client_timeout = SETTINGS.watch_client_timeout
    settings.watching.connect_timeout = 30
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8


# ------------------------------------------------------------------------------------ triggers


@kopf.on.resume(m.GROUP, m.VERSION, m.PLURAL)
@kopf.on.create(m.GROUP, m.VERSION, m.PLURAL)
@kopf.on.update(m.GROUP, m.VERSION, m.PLURAL, field="spec")
def job_changed(name: str, namespace: str | None, **_: Any) -> None:
    reconcile(namespace or "default", name)


# An annotation does not bump metadata.generation and is no part of ``spec``: watch the restart
# annotation on its own (a tuple path, since the key holds dots and a slash).
@kopf.on.update(m.GROUP, m.VERSION, m.PLURAL, field=RESTART_FIELD)
def restart_requested(name: str, namespace: str | None, **_: Any) -> None:
    reconcile(namespace or "default", name)


# No kopf.timer: kopf puts a finalizer on every object with a timer or daemon, and a job could
# then not be deleted while the operator is down. A plain background loop does the periodic part.
_stop = threading.Event()
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resync")


@kopf.on.startup()
def start_resync(**_: Any) -> None:
    _stop.clear()
    threading.Thread(target=_resync_forever, name="resync", daemon=True).start()


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    _stop.set()


def _resync_forever() -> None:
    while not _stop.wait(SETTINGS.resync_seconds):
        try:
            resync_once()
        except Exception:
            log.exception("periodic resync failed")


def resync_once() -> None:
    """Reconcile every job that is not finished (or has a TTL to honour)."""
    futures = []
    namespaces: list[str | None] = [*SETTINGS.namespaces] or [None]
    jobs = [item for ns in namespaces for item in kube.list_jobs(ns)]
    metrics.observe_jobs(jobs)
    for item in jobs:
        meta, spec = item.get("metadata") or {}, item.get("spec") or {}
        status = item.get("status") or {}
        restart = (meta.get("annotations") or {}).get(gitops.RESTART_ANNOTATION)
        if (
            status.get("phase") in m.Phase.TERMINAL
            and spec.get("ttlSecondsAfterFinished") is None
            and restart == status.get(gitops.RESTART_STATUS_FIELD)
        ):
            continue
        futures.append(_pool.submit(_reconcile_logged, meta["namespace"], meta["name"]))
    for future in futures:
        future.result()


def _reconcile_logged(namespace: str, name: str) -> None:
    try:
        reconcile(namespace, name)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        log.warning("reconcile %s/%s: %s", namespace, name, exc)


@kopf.on.event("", "v1", "pods", labels={m.LABEL_JOB: kopf.PRESENT, **b.MANAGED_BY})
def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    reconcile(namespace or "default", labels[m.LABEL_JOB])


@kopf.on.probe(id="jobs")
def probe(**_: Any) -> str:
    return "ok"


# ----------------------------------------------------------------------------------- reconcile


def _json_key(data: dict[str, str] | None, key: str) -> dict[str, Any] | None:
    try:
        value = json.loads((data or {}).get(key) or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _missing_refs(job: m.FineTuneJob) -> tuple[str, str] | None:
    """(reason, message) for what stops a pod: the admin's allowlists, then the first
    referenced object that does not exist."""
    refused = security.violations(job, ALLOWLISTS)
    if refused:
        return m.Reason.NOT_ALLOWED, "; ".join(refused)
    for claim in b.referenced_pvcs(job):
        if not kube.exists("PersistentVolumeClaim", job.namespace, claim):
            return m.Reason.PVC_NOT_FOUND, f'persistentvolumeclaim "{claim}" not found'
    ref = job.spec.dataset.config_map
    if ref is not None and not kube.exists("ConfigMap", job.namespace, ref.name):
        return m.Reason.CONFIG_MAP_NOT_FOUND, f'configmap "{ref.name}" not found'
    return None


def _ensure_children(job: m.FineTuneJob) -> None:
    kube.create_or_get(b.service_account(job))
    kube.create_or_get(b.role(job))
    kube.create_or_get(b.role_binding(job))
    kube.create_or_get(b.progress_config_map(job))
    pvc = b.output_pvc(job)
    if pvc is not None:
        kube.create_or_get(pvc)


def _start_pod(job: m.FineTuneJob, new: m.FineTuneJobStatus, acts: st.Actions) -> None:
    job = job.model_copy(update={"status": new})  # the run (work directory) of the new status
    _ensure_children(job)
    tpl = job.spec.pod_template or m.PodTemplate()
    gpus = job.spec.resources.gpus
    hint = job.spec.resources.gpu_memory_mib
    nodes = kube.list_nodes() if (gpus > 0 and hint is None) else []
    gpu_mem = planner.gpu_memory_mib(nodes, gpus, dict(tpl.node_selector), hint)
    if acts.create_prepare:
        config = b.trainer_config(job, max(1, new.attempt + 1), None, gpu_mem, SETTINGS)
        kube.apply_config_map(b.config_map(job, config))
        kube.create_or_get(b.prepare_pod(job, SETTINGS))
    elif acts.create_train is not None:
        batch = st.batch_for_attempt(job)
        config = b.trainer_config(job, acts.create_train, batch, gpu_mem, SETTINGS)
        kube.apply_config_map(b.config_map(job, config))
        kube.create_or_get(b.train_pod(job, acts.create_train, SETTINGS))


def reconcile(namespace: str, name: str) -> None:
    """Bring one job one step closer to its spec; safe to run any number of times."""
    with _lock(namespace, name):
        # a status that must be on the resource before the next step (status.data and
        # status.plan before the training pod) is published, then the job is read again
        for _ in range(3):
            if not _reconcile_once(namespace, name):
                return


def _reconcile_once(namespace: str, name: str) -> bool:
    """One pass; True when the next step waits for the status just published."""
    try:
        body = kube.get_job(namespace, name)
    except kube.NotFoundError:
        return False
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    now = datetime.now(UTC)
    old_raw: dict[str, Any] = dict(body.get("status") or {})
    try:
        job = m.parse_job(body)
    except ValidationError as exc:
        _bad_spec(body, old_raw, exc, now)
        return False
    if st.ttl_expired(job, now):
        log.info("deleting %s/%s: ttlSecondsAfterFinished passed", namespace, name)
        kube.delete_job(namespace, name)
        return False
    pods = [p for p in kube.list_pods(namespace, name) if security.owned_by(p, job.uid)]
    cm = kube.read_config_map_data(namespace, b.progress_name(job))
    progress = _json_key(cm, b.PROGRESS_KEY)
    prepared = _json_key(cm, b.PREPARE_KEY)
    new = st.derive_status(
        job, pods, progress, prepared, now, max_backoff=SETTINGS.retry_max_backoff_seconds
    )
    acts = st.next_actions(job, new, pods, now)
    if acts.reset_progress:  # a restart: the previous run's reports must not count
        kube.clear_config_map_keys(namespace, b.progress_name(job), (b.PROGRESS_KEY, b.PREPARE_KEY))
    if acts.create_prepare or acts.create_train is not None:
        missing = _missing_refs(job)
        if missing is not None:
            new = st.failed_status(new, job.generation, missing[0], missing[1], now)
        else:
            try:
                _start_pod(job, new, acts)
            except kube.NotOwnedError as exc:
                new = st.failed_status(new, job.generation, m.Reason.NAME_CONFLICT, str(exc), now)
    for pod in acts.delete_pods:
        kube.delete_pod(namespace, pod)
    _publish(body, job.status, new, old_raw, now)
    return acts.publish_first


def _publish(
    body: dict[str, Any],
    old: m.FineTuneJobStatus,
    new: m.FineTuneJobStatus,
    old_raw: dict[str, Any],
    now: datetime,
) -> None:
    meta = body.get("metadata") or {}
    new_raw = m.dump(new)
    patch = st.merge_patch(old_raw, new_raw)
    if patch:
        kube.patch_job_status(meta["namespace"], meta["name"], patch)
        metrics.observe_status(meta["namespace"], meta["name"], old_raw, new_raw, now)
    for kind, reason, message in st.transition_events(old, new):
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
    new = st.failed_status(old, generation, m.Reason.BAD_SPEC, message, now)
    _publish(body, old, new, old_raw, now)

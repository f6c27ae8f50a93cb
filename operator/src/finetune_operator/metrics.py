"""Prometheus metrics of the operator, on their own ``CollectorRegistry`` and port.

Pure of kopf and the kubernetes client: handlers pass plain status dicts (camelCase, as stored
in the API) and the time, one line per call:

* ``observe_status(ns, name, old_status, new_status, now)`` after each status write: phase
  transitions, finished jobs, queue wait, run duration, start-up time, restarts, per-job gauges
  (the progress gauges only while the job is Running: they are removed when it leaves Running);
* ``observe_jobs(jobs)`` from a periodic full list: recounts ``finetune_jobs{phase}`` and drops
  the series of jobs that no longer exist;
* ``forget_job(ns, name)`` when a job is deleted;
* ``start_server(port)`` once at startup.

The finer functions (``record_transition``, ``observe_progress``, ``record_restart``) are what
``observe_status`` is made of and can be called alone.
Timestamps of phase entries are kept in memory: after an operator restart the first queue wait or
start-up of a job already in that phase is not observed rather than guessed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import start_http_server

from finetune_operator import kueue
from finetune_operator import models as m
from finetune_operator.lifecycle.pods import parse_time

# No ``*_created`` series next to every counter and histogram: nothing here reads them, and they
# double the series count (process-wide in prometheus_client; this is the operator's process).
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "finetune_"
"""Every metric's name starts with it (a unit test checks)."""
P = m.Phase
NO_PHASE = "None"
"""``from`` label of the first transition of a new job (it had no phase yet)."""
_NOT_RESTARTS = frozenset({m.Reason.COMPLETED, m.Reason.SUSPENDED, m.Reason.WORKLOAD_EVICTED})
_JOB_LABELS = ("namespace", "job_name")
"""Per-job labels. Not ``job``: Prometheus sets ``job`` to the scrape job (kube-state-metrics
names its label ``job_name`` for the same reason)."""

QUEUE_WAIT_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
STARTUP_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
RUN_DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)


def _version() -> str:
    try:
        return metadata.version("finetune-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass
class _JobState:
    """What the metrics remember about one job between calls."""

    phase: str | None = None
    since: datetime | None = None  # when it entered ``phase`` (None: before our time)
    running_since: datetime | None = None
    running_attempt: int | None = None
    startup_observed: int | None = None  # attempt whose start-up was observed


class OperatorMetrics:
    """All metrics of the operator on one registry (a fresh one per instance: tests use theirs)."""

    def __init__(self, registry: CollectorRegistry | None = None, version: str | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "finetune_build_info",
            "Always 1; the version label says which operator is running.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=version or _version()).set(1)
        self.jobs = Gauge(
            "finetune_jobs", "FineTuneJobs by phase (full recount).", ["phase"], registry=r
        )
        for phase in P.ALL:
            self.jobs.labels(phase=phase).set(0)
        self.transitions = Counter(
            "finetune_job_phase_transitions",
            "Phase transitions of FineTuneJobs.",
            ["from", "to"],
            registry=r,
        )
        self.finished = Counter(
            "finetune_jobs_finished",
            "FineTuneJobs that ended, by result (succeeded, failed) and reason.",
            ["result", "reason"],
            registry=r,
        )
        self.restarts = Counter(
            "finetune_job_restarts",
            "Training or prepare pods that ended early and were retried or resumed, by reason "
            "(OOMKilled, CudaOOM, Evicted, Preempted, PodDeleted, Error…).",
            ["reason"],
            registry=r,
        )
        self.preemptions = Counter(
            "finetune_job_preemptions",
            "Training attempts Kueue evicted (checkpointed and requeued, no retry counted), by "
            "the Workload's eviction reason (Preempted, PodsReadyTimeout, …).",
            ["reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "finetune_job_queue_wait_seconds",
            "Time jobs spent in phase Queued (waiting for GPUs).",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.startup = Histogram(
            "finetune_job_startup_seconds",
            "Time from the trainer pod running to its first reported step, per attempt.",
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "finetune_job_run_duration_seconds",
            "Time from the first training pod start to the end of finished jobs.",
            buckets=RUN_DURATION_BUCKETS,
            registry=r,
        )
        self.job_phase = Gauge(
            "finetune_job_phase",
            "1 for the job's current phase, 0 for the others.",
            [*_JOB_LABELS, "phase"],
            registry=r,
        )
        self.progress_ratio = Gauge(
            "finetune_job_progress_ratio",
            "Steps done / total steps (0..1).",
            _JOB_LABELS,
            registry=r,
        )
        self.step = Gauge("finetune_job_step", "Optimizer steps done.", _JOB_LABELS, registry=r)
        self.loss = Gauge("finetune_job_loss", "Latest training loss.", _JOB_LABELS, registry=r)
        self.eval_loss = Gauge(
            "finetune_job_eval_loss",
            "Loss on the held-out data at the latest evaluation (spec.evaluation).",
            _JOB_LABELS,
            registry=r,
        )
        self.tokens_per_second = Gauge(
            "finetune_job_tokens_per_second", "Training throughput.", _JOB_LABELS, registry=r
        )
        self.eta = Gauge(
            "finetune_job_eta_seconds",
            "Estimated seconds until training ends.",
            _JOB_LABELS,
            registry=r,
        )
        self._per_job: tuple[Gauge, ...] = (
            self.progress_ratio,
            self.step,
            self.loss,
            self.eval_loss,
            self.tokens_per_second,
            self.eta,
        )
        self._state: dict[tuple[str, str], _JobState] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ per call

    def observe_status(
        self,
        namespace: str,
        name: str,
        old_status: Mapping[str, Any] | None,
        new_status: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Everything one status write tells: transitions, finished jobs, restarts, progress."""
        old = old_status or {}
        old_phase = old.get("phase")
        self.record_transition(
            namespace, name, old_phase, new_status.get("phase"), status=new_status, now=now
        )
        before = len(old.get("attempts") or [])
        for rec in (new_status.get("attempts") or [])[before:]:
            reason = str((rec or {}).get("reason") or "")
            if reason and reason not in _NOT_RESTARTS:
                self.record_restart(reason)
            if reason == m.Reason.WORKLOAD_EVICTED:
                cause = kueue.eviction_cause(str((rec or {}).get("message") or ""))
                self.preemptions.labels(reason=cause).inc()
        progress = new_status.get("progress")
        if new_status.get("phase") != P.RUNNING:
            self.drop_progress(namespace, name)  # no stale ETA/throughput to add up
        elif isinstance(progress, Mapping):
            self.observe_progress(namespace, name, progress, now)

    def record_transition(
        self,
        namespace: str,
        name: str,
        old_phase: str | None,
        new_phase: str | None,
        *,
        status: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Count a phase change (a no-op when the phase did not change) and observe what it
        ends: the queue wait when leaving Queued, the run duration and result when finishing."""
        if not new_phase:
            return
        key = (namespace, name)
        with self._lock:
            state = self._state.setdefault(key, _JobState())
            known = state.phase if state.phase is not None else old_phase
            if known == new_phase:
                if state.phase is None:
                    state.phase = new_phase  # first sight after a restart: no entry time
                self._set_phase(namespace, name, new_phase)
                return
            self.transitions.labels(**{"from": known or NO_PHASE, "to": new_phase}).inc()
            if known == P.QUEUED and state.since is not None:
                self.queue_wait.observe(max(0.0, (now - state.since).total_seconds()))
            if new_phase == P.RUNNING:
                state.running_since = now
                state.running_attempt = int(status.get("attempt") or 0)
            state.phase, state.since = new_phase, now
            self._set_phase(namespace, name, new_phase)
        if new_phase in P.TERMINAL:
            self._finished(new_phase, status, now)

    def _set_phase(self, namespace: str, name: str, phase: str) -> None:
        for candidate in P.ALL:
            self.job_phase.labels(namespace, name, candidate).set(1 if candidate == phase else 0)

    def _finished(self, phase: str, status: Mapping[str, Any], now: datetime) -> None:
        result = "succeeded" if phase == P.SUCCEEDED else "failed"
        default = m.Reason.COMPLETED if phase == P.SUCCEEDED else m.Reason.ERROR
        self.finished.labels(result=result, reason=str(status.get("reason") or default)).inc()
        start = parse_time(status.get("startTime"))
        end = parse_time(status.get("completionTime")) or now
        if start is not None:
            self.run_duration.observe(max(0.0, (end - start).total_seconds()))

    def observe_progress(
        self, namespace: str, name: str, progress: Mapping[str, Any], now: datetime | None = None
    ) -> None:
        """Set the per-job gauges from ``status.progress`` (missing fields drop their series);
        the first report with a step of an attempt that we saw enter Running gives its
        start-up time."""
        labels = (namespace, name)
        step = _number(progress.get("step"))
        total = _number(progress.get("totalSteps"))
        percent = _number(progress.get("percent"))
        ratio = percent / 100 if percent is not None else None
        if ratio is None and step is not None and total:
            ratio = step / total
        values = {
            self.progress_ratio: None if ratio is None else min(1.0, max(0.0, ratio)),
            self.step: step,
            self.loss: _number(progress.get("loss")),
            self.eval_loss: _number(progress.get("evalLoss")),
            self.tokens_per_second: _number(progress.get("tokensPerSecond")),
            self.eta: _number(progress.get("etaSeconds")),
        }
        for gauge, value in values.items():
            if value is None:
                self._remove(gauge, labels)
            else:
                gauge.labels(*labels).set(value)
        if step is None or step < 1:
            return
        with self._lock:
            state = self._state.get(labels)
            if state is None or state.running_since is None:
                return
            attempt = progress.get("attempt")
            if attempt is not None and attempt != state.running_attempt:
                return
            if state.startup_observed == state.running_attempt:
                return
            state.startup_observed = state.running_attempt
            when = parse_time(progress.get("updatedAt")) or now
            if when is None:
                return
            self.startup.observe(max(0.0, (when - state.running_since).total_seconds()))

    def drop_progress(self, namespace: str, name: str) -> None:
        """Remove the job's progress gauges (step, ratio, loss, eval loss, tokens/s, ETA): they
        exist only while the job is Running; its phase series stays."""
        for gauge in self._per_job:
            self._remove(gauge, (namespace, name))

    def record_restart(self, reason: str) -> None:
        """One pod that ended early (retried, preempted or resumed), by its reason."""
        self.restarts.labels(reason=reason).inc()

    # --------------------------------------------------------------------------- whole sets

    def observe_jobs(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Recount ``finetune_jobs{phase}`` from the full list of job objects (a job without a
        phase yet counts as Pending), drop the progress gauges of jobs not Running and forget the
        jobs that are no longer listed."""
        counts = dict.fromkeys(P.ALL, 0)
        seen: set[tuple[str, str]] = set()
        for job in jobs:
            meta = job.get("metadata") or {}
            phase = str((job.get("status") or {}).get("phase") or P.PENDING)
            counts[phase] = counts.get(phase, 0) + 1
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            seen.add(key)
            if phase != P.RUNNING:
                self.drop_progress(*key)
        for phase, count in counts.items():
            self.jobs.labels(phase=phase).set(count)
        for namespace, name in self.tracked_jobs() - seen:
            self.forget_job(namespace, name)

    def tracked_jobs(self) -> set[tuple[str, str]]:
        """(namespace, name) of every job with per-job series or remembered state."""
        found: set[tuple[str, str]] = set(self._state)
        for gauge in (*self._per_job, self.job_phase):
            for metric in gauge.collect():
                for sample in metric.samples:
                    found.add((sample.labels["namespace"], sample.labels["job_name"]))
        return found

    def forget_job(self, namespace: str, name: str) -> None:
        """Drop the job's per-job series and remembered state (the job was deleted)."""
        labels = (namespace, name)
        with self._lock:
            self._state.pop(labels, None)
        self.drop_progress(namespace, name)
        for phase in P.ALL:
            self._remove(self.job_phase, (*labels, phase))

    @staticmethod
    def _remove(gauge: Gauge, labels: tuple[str, ...]) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)

    def exposition(self) -> bytes:
        """The text exposition format, as served on /metrics."""
        return generate_latest(self.registry)

    def start_server(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics of this registry on ``addr:port`` from a daemon thread; returns the
        bound port (``port=0`` picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)


METRICS = OperatorMetrics()
"""The operator's metrics; the module-level functions below act on it."""


def observe_status(
    namespace: str,
    name: str,
    old_status: Mapping[str, Any] | None,
    new_status: Mapping[str, Any],
    now: datetime,
) -> None:
    """See ``OperatorMetrics.observe_status``."""
    METRICS.observe_status(namespace, name, old_status, new_status, now)


def record_transition(
    namespace: str,
    name: str,
    old_phase: str | None,
    new_phase: str | None,
    *,
    status: Mapping[str, Any],
    now: datetime,
) -> None:
    """See ``OperatorMetrics.record_transition``."""
    METRICS.record_transition(namespace, name, old_phase, new_phase, status=status, now=now)


def observe_progress(
    namespace: str, name: str, progress: Mapping[str, Any], now: datetime | None = None
) -> None:
    """See ``OperatorMetrics.observe_progress``."""
    METRICS.observe_progress(namespace, name, progress, now)


def record_restart(reason: str) -> None:
    """See ``OperatorMetrics.record_restart``."""
    METRICS.record_restart(reason)


def observe_jobs(jobs: Iterable[Mapping[str, Any]]) -> None:
    """See ``OperatorMetrics.observe_jobs``."""
    METRICS.observe_jobs(jobs)


def forget_job(namespace: str, name: str) -> None:
    """See ``OperatorMetrics.forget_job``."""
    METRICS.forget_job(namespace, name)


def start_server(port: int, addr: str = "0.0.0.0") -> int | None:
    """Serve the operator's metrics on ``port`` (``0`` = off); returns the bound port."""
    return METRICS.start_server(port, addr) if port else None

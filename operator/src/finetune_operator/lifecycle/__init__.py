"""The job's lifecycle, pure: typed trainer reports, pod classification, the phase machine,
conditions, and the actions, Events and status patch a reconcile makes.

=============== ===============================================================================
``reports``     progress.json and prepare.json as typed models (parsed at the I/O edge)
``pods``        a pod's kind and failure reason; failure messages as sentences
``conditions``  ``CONDITION_TABLE``: the kstatus conditions of each phase
``events``      ``observe`` (the inputs as a ``Situation``) and ``classify`` (its one ``Event``)
``phases``      one small pure handler per event, returning a new status; their ``RULES``
``derive``      ``derive_status``: classify, then the handler ``TABLE[(phase, event)]`` gives;
                ``TRANSITIONS``, deadlines
``restart``     the restart annotation: a new run from step 0
``retry``       the retry annotation: a Failed job tries again from its newest checkpoint
``actions``     ``next_actions``, ``transition_events``, ``merge_patch``, handler-side statuses
=============== ===============================================================================

Nothing here imports kopf or the kubernetes client, reads a clock or the environment.
"""

from finetune_operator.lifecycle.actions import (
    Actions,
    children_needed,
    failed_status,
    merge_patch,
    next_actions,
    rejected,
    transition_events,
    ttl_expired,
    wake_at,
)
from finetune_operator.lifecycle.conditions import (
    CONDITION_TABLE,
    MAX_MESSAGE,
    conditions_for,
    set_condition,
)
from finetune_operator.lifecycle.derive import (
    TRANSITIONS,
    active_since,
    backoff_seconds,
    batch_for_attempt,
    derive_status,
)
from finetune_operator.lifecycle.pods import (
    PodKind,
    PodState,
    attempt_of,
    failure_message,
    missing_claim,
    parse_time,
    pod_state,
    sentence,
)
from finetune_operator.lifecycle.reports import (
    PrepareReport,
    ProgressReport,
    humanize,
    merge_checkpoint,
    merge_progress,
    parse_prepare,
    parse_progress,
    prepare_from,
    progress_from,
)
from finetune_operator.lifecycle.restart import restart_requested, restart_status, restarting
from finetune_operator.lifecycle.retry import retry_requested, retry_status, retrying

__all__ = [
    "CONDITION_TABLE",
    "MAX_MESSAGE",
    "TRANSITIONS",
    "Actions",
    "PodKind",
    "PodState",
    "PrepareReport",
    "ProgressReport",
    "active_since",
    "attempt_of",
    "backoff_seconds",
    "batch_for_attempt",
    "children_needed",
    "conditions_for",
    "derive_status",
    "failed_status",
    "failure_message",
    "humanize",
    "merge_checkpoint",
    "merge_patch",
    "merge_progress",
    "missing_claim",
    "next_actions",
    "parse_prepare",
    "parse_progress",
    "parse_time",
    "pod_state",
    "prepare_from",
    "progress_from",
    "rejected",
    "restart_requested",
    "restart_status",
    "restarting",
    "retry_requested",
    "retry_status",
    "retrying",
    "sentence",
    "set_condition",
    "transition_events",
    "ttl_expired",
    "wake_at",
]

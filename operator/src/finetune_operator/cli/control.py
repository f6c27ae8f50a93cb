"""Verbs that change a job declaratively: ``suspend`` (alias ``pause``), ``resume``, ``restart``,
``retry``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from finetune_operator import models as m
from finetune_operator.cli.api import Api

_KIND = f"finetunejob.{m.GROUP}"


def set_suspend(api: Api, name: str, suspend: bool, out: TextIO) -> int:
    """``suspend`` / ``resume``: merge-patch ``spec.suspend`` (the same field GitOps drives)."""
    job = api.get_job(api.namespace, name)
    verb = "suspended" if suspend else "resumed"
    if bool((job.get("spec") or {}).get("suspend", False)) == suspend:
        print(f"{_KIND}/{name} already {verb} (spec.suspend={str(suspend).lower()})", file=out)
        return 0
    api.patch_job(api.namespace, name, {"spec": {"suspend": suspend}})
    print(f"{_KIND}/{name} {verb}", file=out)
    return 0


def restart_value(now: datetime) -> str:
    """The annotation value: the request time in RFC 3339, UTC, seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def restart(api: Api, name: str, out: TextIO, now: datetime | None = None) -> int:
    """``restart``: ask the operator to start over from step 0 by setting the annotation
    ``finetune.dev/restart-requested-at`` (what the Argo CD restart action does)."""
    return _request(api, name, m.RESTART_ANNOTATION, "restart", out, now=now)


def retry(api: Api, name: str, out: TextIO, now: datetime | None = None) -> int:
    """``retry``: ask the operator to try a Failed job again from its newest complete checkpoint
    by setting the annotation ``finetune.dev/retry-requested-at`` (the Argo CD retry action)."""
    job = api.get_job(api.namespace, name)
    phase = (job.get("status") or {}).get("phase")
    if phase != m.Phase.FAILED:
        print(
            f"{_KIND}/{name} is {phase or 'not started'}, not Failed: nothing to retry "
            "(`kubectl finetune restart` trains again from step 0)",
            file=out,
        )
        return 1
    return _request(api, name, m.RETRY_ANNOTATION, "retry", out, now=now)


def _request(
    api: Api, name: str, annotation: str, what: str, out: TextIO, *, now: datetime | None
) -> int:
    value = restart_value(now or datetime.now(UTC))
    api.patch_job(api.namespace, name, {"metadata": {"annotations": {annotation: value}}})
    print(f"{_KIND}/{name} {what} requested ({annotation}={value})", file=out)
    return 0

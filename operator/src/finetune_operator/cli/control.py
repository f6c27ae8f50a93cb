"""Verbs that change a job declaratively: ``suspend`` (alias ``pause``), ``resume``, ``restart``."""

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
    value = restart_value(now or datetime.now(UTC))
    patch = {"metadata": {"annotations": {m.RESTART_ANNOTATION: value}}}
    api.patch_job(api.namespace, name, patch)
    print(f"{_KIND}/{name} restart requested ({m.RESTART_ANNOTATION}={value})", file=out)
    return 0

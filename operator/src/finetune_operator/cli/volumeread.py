"""Reading the logs of gone pods from the job's volume: carries out volumelogs.plan (the
access checks, ``kubectl exec``, the reader pod's short life) with the plugin's Api."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_operator import builders as b
from finetune_operator.cli import volumelogs as v
from finetune_operator.cli.api import Api, CliError

EXEC_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """Each pod's log (or why not) and how the volume was read (None: it was not)."""

    found: dict[str, v.Found]
    how: str | None


def _may(api: Api, verb: str, resource: str, subresource: str = "") -> bool:
    """The review's answer; when the review itself fails, try (the API server decides)."""
    try:
        return api.can_i(api.namespace, verb, resource, subresource)
    except CliError:
        return True


def _reader_failed(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    for c in status.get("containerStatuses") or []:
        state = c.get("state") or {}
        done = state.get("terminated") or state.get("waiting") or {}
        if done:
            return str(done.get("message") or done.get("reason") or "unknown")
    return str(status.get("reason") or status.get("message") or status.get("phase") or "unknown")


def run_reader(
    api: Api,
    body: dict[str, Any],
    *,
    deadline_s: float = v.READER_DEADLINE_S + 15,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Create the reader pod, wait until it ends, return its output; delete it in every case."""
    name = body["metadata"]["name"]
    api.create_pod(api.namespace, body)
    try:
        end = clock() + deadline_s
        while True:
            pod = api.read_pod(api.namespace, name)
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Succeeded":
                return api.read_log(api.namespace, name)
            if phase == "Failed":
                raise CliError(f'reader pod "{name}" failed: {_reader_failed(pod)}')
            if clock() > end:
                raise CliError(
                    f'reader pod "{name}" did not finish in {deadline_s:.0f} s '
                    f"({phase}: {_reader_failed(pod)})"
                )
            sleep(1.0)
    finally:
        api.delete_pod(api.namespace, name)


def read_gone(
    api: Api,
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    gone: Sequence[str],
    *,
    max_bytes: int | None = None,
    reader: Callable[[Api, dict[str, Any]], str] = run_reader,
) -> Outcome:
    """The logs of the pods ``gone`` from the volume, by the first way of the plan that works."""
    where = v.locate(job)
    if where is None:
        problem = "the job's spec cannot be read, so its volume is unknown"
        return Outcome({p: v.Found(problem=problem) for p in gone}, None)
    access = v.Access(
        exec_pods=_may(api, "create", "pods", "exec"),
        # a reader the plugin could not delete would outlive the read
        create_pods=_may(api, "create", "pods") and _may(api, "delete", "pods"),
    )
    chosen = v.plan(job, pods, where, access)
    failures = list(chosen.skipped)
    for method, target in chosen.steps:
        try:
            if method == "exec":
                command = v.read_command(where, gone, max_bytes)
                output = api.exec_output(
                    api.namespace, target, b.CONTAINER, command, EXEC_TIMEOUT_S
                )
                how = f"read by exec in pod {target}"
            else:
                command = v.read_command(where, gone, v.reader_bytes(max_bytes, len(gone)))
                name = v.reader_name(str((job.get("metadata") or {}).get("name")))
                output = reader(api, v.reader_pod(job, where, target, command, name))
                how = f"read by the reader pod {name}, deleted"
        except CliError as exc:
            failures.append(str(exc))
            continue
        return Outcome(v.parse(output, gone), how)
    why = "; ".join(failures)
    return Outcome({p: v.Found(problem=f"{why}; it is on {where.files(p)}") for p in gone}, None)

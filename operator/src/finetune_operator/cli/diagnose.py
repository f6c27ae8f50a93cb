"""Verbs for looking closer: ``logs``, ``events`` and ``report`` (a tarball for bug reports)."""

from __future__ import annotations

import io
import re
import sys
import tarfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import yaml

from finetune_operator import builders as b
from finetune_operator import models as m
from finetune_operator.cli import render as r
from finetune_operator.cli import volumelogs, volumeread
from finetune_operator.cli.api import Api, CliError
from finetune_operator.cli.jobs import clean, job_events

REPORT_LOG_LINES = 500
REPORT_VOLUME_BYTES = 2**20  # of a gone pod's file: enough for the last 500 lines
_SENSITIVE = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_?KEY", re.IGNORECASE)
REDACTED = "<redacted>"


def logs(
    api: Api, name: str, follow: bool, tail: int | None, out: BinaryIO, *, every: bool = False
) -> int:
    """``kubectl finetune logs NAME [-f] [--all]``: the current attempt's trainer pod, else the
    newest pod of the job (saying so when the current attempt's pod is gone); with ``--all``
    every pod of the job, oldest first, and the attempts whose pods are gone."""
    job = api.get_job(api.namespace, name)
    pods = api.list_pods(api.namespace, name)
    if every:
        return _all_logs(api, job, pods, tail, out)
    attempt = (job.get("status") or {}).get("attempt")
    pod = r.trainer_pod(pods, attempt)
    if pod is None:
        raise CliError(f'no pods of finetunejob "{name}" yet (phase {r.phase(job)})')
    pod_name = pod["metadata"]["name"]
    if attempt and _attempt_of(pod) != str(attempt):
        print(f"==> the pod of attempt {attempt} is gone; `--all` shows every attempt, the gone "
              "ones from the job's volume", file=sys.stderr)  # fmt: skip
    print(f"==> pod {pod_name}", file=sys.stderr, flush=True)
    if follow:
        for chunk in api.stream_log(api.namespace, pod_name, tail=tail):
            out.write(chunk)
            out.flush()
        return 0
    out.write(api.read_log(api.namespace, pod_name, tail=tail).encode())
    out.flush()
    return 0


def _attempt_of(pod: Mapping[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(m.LABEL_ATTEMPT) if labels.get(m.LABEL_ROLE) == "train" else None


def _gone(job: Mapping[str, Any], present: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The attempts recorded in the status whose pods are gone, by pod name."""
    return {
        str(a.get("pod")): a
        for a in (job.get("status") or {}).get("attempts") or []
        if a.get("pod") and a.get("pod") not in present and a.get("attempt") is not None
    }


def _all_logs(
    api: Api, job: dict[str, Any], pods: list[dict[str, Any]], tail: int | None, out: BinaryIO
) -> int:
    """Every pod's log under a header, prepare first, then the attempts in order; an attempt
    recorded in the status whose pod is gone is read from the job's volume (volumeread.py)."""
    present = {p["metadata"]["name"]: p for p in pods}
    gone = _gone(job, present)
    kept = volumeread.read_gone(api, job, pods, list(gone)) if gone else None

    def order(pod_name: str) -> tuple[int, str]:
        pod = present.get(pod_name)
        number = _attempt_of(pod) if pod is not None else str(gone[pod_name].get("attempt"))
        return (int(number) if number and number.isdigit() else 0, pod_name)

    for pod_name in sorted([*present, *gone], key=order):
        if pod_name in gone and kept is not None:
            rec = gone[pod_name]
            found = kept.found[pod_name]
            what = f"attempt {rec['attempt']}" if rec["attempt"] else "prepare"
            head = f"==> pod {pod_name} ({what}, {rec.get('reason')}): gone"
            if found.text:
                out.write(f"{head}; its log from the job's volume, {kept.how} <==\n".encode())
                if found.skipped and tail is None:
                    out.write(f"(its first {found.skipped} bytes left out)\n".encode())
                out.write(volumelogs.tail_lines(found.text, tail).encode())
                if found.problem:
                    out.write(f"(incomplete: {found.problem})\n".encode())
            else:
                out.write(f"{head} <==\n(no log: {found.problem})\n".encode())
            continue
        number = _attempt_of(present[pod_name])
        what = f"attempt {number}" if number else "prepare"
        out.write(f"==> pod {pod_name} ({what}) <==\n".encode())
        try:
            out.write(api.read_log(api.namespace, pod_name, tail=tail).encode())
        except CliError as exc:
            out.write(f"(no log: {exc})\n".encode())
    out.flush()
    return 0


def events(api: Api, name: str, out: TextIO) -> int:
    """``kubectl finetune events NAME``: Events of the job and its pods, oldest first."""
    job = api.get_job(api.namespace, name)
    found = job_events(api, job)
    if not found:
        print(f'No events for finetunejob "{name}".', file=sys.stderr)
        return 0
    print(r.events_table(found, datetime.now(UTC)), file=out)
    return 0


def redact(obj: Any) -> Any:
    """A copy with literal env values of sensitive-looking names replaced (``env[].value`` of
    HF_TOKEN, *_PASSWORD…). Secrets themselves are never read."""
    if isinstance(obj, list):
        return [redact(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: redact(v) for k, v in obj.items()}
    if isinstance(out.get("name"), str) and "value" in out and _SENSITIVE.search(out["name"]):
        out["value"] = REDACTED
    return out


def _containers(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]


def _add(tar: tarfile.TarFile, path: str, data: str, mtime: float) -> None:
    raw = data.encode()
    info = tarfile.TarInfo(path)
    info.size = len(raw)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(raw))


def report_files(api: Api, name: str, now: datetime) -> dict[str, str]:
    """The report's files: job, pods, events and the last lines of every container's log."""
    job = api.get_job(api.namespace, name)
    pods = api.list_pods(api.namespace, name)
    found = job_events(api, job)
    files = {
        "job.yaml": yaml.safe_dump(redact(clean(job)), sort_keys=False),
        "pods.yaml": yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": [redact(clean(p)) for p in pods]},
            sort_keys=False,
        ),
        "events.yaml": yaml.safe_dump(
            {"apiVersion": "v1", "kind": "List", "items": [clean(e) for e in found]},
            sort_keys=False,
        ),
        "events.txt": r.events_table(found, now) + "\n",
    }
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        for container in _containers(pod):
            try:
                text = api.read_log(api.namespace, pod_name, container, tail=REPORT_LOG_LINES)
            except CliError as exc:
                text = f"(no log: {exc})\n"
            files[f"logs/{pod_name}/{container}.log"] = text
    present = {p["metadata"]["name"]: p for p in pods}
    gone = _gone(job, present)
    kept = (
        volumeread.read_gone(api, job, pods, list(gone), max_bytes=REPORT_VOLUME_BYTES)
        if gone
        else None
    )
    for pod_name in gone:
        log = kept.found[pod_name] if kept is not None else volumelogs.Found(problem="unknown")
        files[f"logs/{pod_name}/{b.CONTAINER}.log"] = (
            volumelogs.tail_lines(log.text, REPORT_LOG_LINES)
            if log.text
            else f"(no log: {log.problem})\n"
        )
    how = f" (read from the job's volume, {kept.how})" if kept and kept.how else ""
    try:
        server = api.server_version()
    except CliError:
        server = "unknown"
    files["summary.txt"] = (
        f"{r.status_line(job)}\n"
        f"namespace: {api.namespace}\n"
        f"collected: {now.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"kubernetes: {server}\n"
        f"pods: {', '.join(p['metadata']['name'] for p in pods) or '-'}\n"
        f"logs: last {REPORT_LOG_LINES} lines of each container\n"
        f"gone pods: {', '.join(gone) or '-'}{how}\n"
    )
    return files


def report(api: Api, name: str, output: str | None, out: TextIO) -> int:
    """``kubectl finetune report NAME [-o file.tar.gz]``."""
    now = datetime.now(UTC)
    files = report_files(api, name, now)
    path = Path(output or f"finetune-report-{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz")
    top = path.name.removesuffix(".tar.gz").removesuffix(".tgz")
    stamp = time.time()
    with tarfile.open(path, "w:gz") as tar:
        for rel, data in files.items():
            _add(tar, f"{top}/{rel}", data, stamp)
    print(f"wrote {path} ({len(files)} files)", file=out)
    return 0

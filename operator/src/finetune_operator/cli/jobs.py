"""Verbs that read jobs: ``list``, ``get``, ``status`` and ``watch``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

from finetune_operator import models as m
from finetune_operator.cli import render as r
from finetune_operator.cli.api import Api, NotFoundError

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without ``metadata.managedFields`` (noise in YAML output and reports)."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def list_jobs(api: Api, all_namespaces: bool, watch: bool, out: TextIO) -> int:
    """``kubectl finetune list [-A] [-w]``."""
    namespace = None if all_namespaces else api.namespace
    found = api.list_jobs(namespace)
    items = sorted(
        found.get("items") or [],
        key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]),
    )
    now = _now()
    rows = [r.job_headers(all_namespaces)]
    rows += [r.job_row(j, now, with_namespace=all_namespaces) for j in items]
    if len(rows) == 1 and not watch:
        where = "any namespace" if all_namespaces else f"namespace {api.namespace}"
        print(f"No FineTuneJobs found in {where}.", file=sys.stderr)
        return 0
    widths = r.column_widths(rows)
    for row in rows:
        print(r.format_row(row, widths), file=out, flush=True)
    if not watch:
        return 0
    version = (found.get("metadata") or {}).get("resourceVersion")
    while True:
        for kind, job in api.watch_jobs(namespace, version):
            if kind == "ERROR":  # resource version too old: list again from now
                version = None
                break
            version = (job.get("metadata") or {}).get("resourceVersion") or version
            if kind == "BOOKMARK":
                continue
            row = r.job_row(job, _now(), with_namespace=all_namespaces)
            if kind == "DELETED":
                row[len(row) - len(r.JOB_HEADERS) + 1] = "Deleted"
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
            print(r.format_row(row, widths), file=out, flush=True)


def get_job(api: Api, name: str, output: str, out: TextIO) -> int:
    """``kubectl finetune get NAME [-o yaml|json|wide]``."""
    job = clean(api.get_job(api.namespace, name))
    if output == "json":
        print(json.dumps(job, indent=2, sort_keys=False), file=out)
    elif output == "yaml":
        print(yaml.safe_dump(job, sort_keys=False, default_flow_style=False), end="", file=out)
    else:
        print(r.format_table([r.job_headers(), r.job_row(job, _now())]), file=out)
    return 0


def status(
    api: Api,
    name: str,
    *,
    watch: bool,
    timeout: float | None,
    interval: float,
    out: TextIO,
    clock: Clock = _now,
) -> int:
    """``kubectl finetune status NAME [--watch] [--timeout S]``: one line per change; the exit
    code says how it ended (render.exit_code, EXIT_TIMEOUT)."""
    start = time.monotonic()
    last = ""
    while True:
        job = api.get_job(api.namespace, name)
        line = r.status_line(job)
        if line != last:
            print(line, file=out, flush=True)
            last = line
        ph = r.phase(job)
        code = r.exit_code(ph)
        if not watch or code != r.EXIT_IN_PROGRESS:
            return code
        if timeout is not None and time.monotonic() - start >= timeout:
            print(f"timed out after {timeout:g}s waiting for {name} ({ph})", file=sys.stderr)
            return r.EXIT_TIMEOUT
        wait = interval
        if timeout is not None:
            wait = max(0.0, min(interval, timeout - (time.monotonic() - start)))
        time.sleep(wait)


def job_events(api: Api, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Events of the job (this incarnation: same uid) and of its pods."""
    meta = job.get("metadata") or {}
    ns, name, uid = meta.get("namespace", api.namespace), meta.get("name", ""), meta.get("uid")
    pods = [p["metadata"]["name"] for p in api.list_pods(ns, name)]
    events = api.list_events(ns, [name, *pods])
    out = []
    for ev in events:
        obj = ev.get("involvedObject") or {}
        if obj.get("kind") == m.KIND and uid and obj.get("uid") not in (None, uid):
            continue
        out.append(ev)
    return out


def watch(
    api: Api,
    name: str,
    *,
    interval: float,
    out: TextIO,
    live: bool | None = None,
    clock: Clock = _now,
) -> int:
    """``kubectl finetune watch NAME``: the live view on a terminal, else one line per update;
    returns when the job is Succeeded (0) or Failed (1)."""
    if live is None:
        live = out.isatty()
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            print(
                "rich is not installed (pip install 'finetune-operator[cli]'); "
                "printing one line per update",
                file=sys.stderr,
            )
            live = False
    if live:
        return _watch_live(api, name, interval, out, clock)
    last_status, seen = "", set[str]()
    while True:
        job = api.get_job(api.namespace, name)
        new = r.unseen_events(job_events(api, job), seen)  # each Event once, repeats included
        status = r.status_line(job)
        if status != last_status or new:
            print(r.update_line(job, new[-1] if new else None, clock()), file=out, flush=True)
            last_status = status
        if r.phase(job) in m.Phase.TERMINAL:
            return r.exit_code(r.phase(job))
        time.sleep(interval)


def _watch_live(api: Api, name: str, interval: float, out: TextIO, clock: Clock) -> int:
    from rich.console import Console
    from rich.live import Live

    from finetune_operator.cli.live import live_view

    console = Console(file=out)
    job = api.get_job(api.namespace, name)
    events = job_events(api, job)
    with Live(
        live_view(job, events, clock()), console=console, auto_refresh=False, transient=False
    ) as view:
        while r.phase(job) not in m.Phase.TERMINAL:
            time.sleep(interval)
            try:
                job = api.get_job(api.namespace, name)
            except NotFoundError:
                console.print(f"[red]{name} was deleted[/red]")
                return r.EXIT_ERROR
            events = job_events(api, job)
            view.update(live_view(job, events, clock()), refresh=True)
    return r.exit_code(r.phase(job))

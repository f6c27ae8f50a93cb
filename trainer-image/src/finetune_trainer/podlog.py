"""The pod's own log lines, kept on the job's volume: ``<work>/logs/<job uid>/<pod>.log``.

A pod's log goes with the pod (a retry, a suspend, the TTL, a lost node), so every stage
(prepare, train, export) also appends its log lines to a file on the work volume, where
``kubectl finetune logs --all`` finds the log of an attempt whose pod is gone (docs/contract.md
section 2). The file is best effort and never changes how a run ends:

* one file per pod; only one process writes it: in a data-parallel pod the launcher relays its
  ranks' output line by line (``relay``), the ranks themselves write no file;
* every record is written and flushed at once (a pod killed later loses nothing written);
* size-capped: above ``MAX_BYTES`` the file moves to ``<pod>.log.1`` (the one before is dropped)
  and a new one starts, so a pod keeps at most 2 x ``MAX_BYTES`` (Python's RotatingFileHandler);
* the first failure to write it (a full or read-only volume) turns the file off with one line on
  stderr; a full volume is still reported by whatever stage write hits it (diskfull.py), never
  by the log file.

The directory is keyed by the job's UID: a job deleted and created again under the same name
(workdir.py) does not append to, or show, the old job's logs.

``read`` is the other side: ``finetune-trainer read-logs`` prints files of this directory as
JSON lines for the plugin, which runs it with ``kubectl exec`` in a running pod of the job or in a
short-lived read-only reader pod.
"""

from __future__ import annotations

import codecs
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

LOG_DIR = "logs"
MAX_BYTES = 20 * 2**20
BACKUPS = 1  # <pod>.log.1
POD_ENV = "FTO_POD_NAME"  # the downward API's metadata.name (builders.py)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CHUNK = 64 * 2**10  # read-logs: bytes per JSON line (kubelet splits longer lines in its files)
_SAFE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def pod_name(env: Mapping[str, str]) -> str:
    """This pod's name: the downward API's, else the hostname Kubernetes sets to it."""
    return env.get(POD_ENV) or env.get("HOSTNAME") or "trainer"


def log_dir(work: Path, uid: str | None) -> Path:
    """The directory of one job's pod logs (no UID: a trainer run by hand)."""
    return work / LOG_DIR / uid if uid else work / LOG_DIR


def file_names(pod: str) -> tuple[str, ...]:
    """A pod's files, oldest part first."""
    return (*(f"{pod}.log.{i}" for i in range(BACKUPS, 0, -1)), f"{pod}.log")


class _Formatter(logging.Formatter):
    """The console's format; a relayed rank line (``raw``) is written as it came."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "raw", False):
            return record.getMessage()
        return super().format(record)


class PodLogHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that turns itself off at its first error instead of printing a
    traceback per record (logging's default) or ever raising into the run."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=BACKUPS, encoding="utf-8")
        self.setFormatter(_Formatter(FORMAT))
        self.broken: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if self.broken is not None:
            return
        self.broken = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        try:
            stream = self.stream
            self.stream = None  # type: ignore[assignment]  # buffered bytes would fail again
            if stream is not None:
                stream.close()
        except OSError:
            pass
        print(
            f"the pod log file {self.baseFilename} is off from here on ({self.broken}); "
            "the pod's own log is complete",
            file=sys.stderr,
            flush=True,
        )

    def write_line(self, line: str) -> None:
        """One relayed line (a rank's output, already formatted)."""
        self.handle(logging.makeLogRecord({"msg": line.rstrip("\n"), "raw": True}))


def attach(work: Path, uid: str | None, env: Mapping[str, str]) -> PodLogHandler | None:
    """Append this process's log records to ``<work>/logs/<uid>/<pod>.log``; None (with one
    warning) when the directory cannot be made."""
    directory = log_dir(work, uid)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handler = PodLogHandler(directory / f"{pod_name(env)}.log")
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "no pod log file in %s (%s); the pod's own log is complete", directory, exc
        )
        return None
    logging.getLogger().addHandler(handler)
    return handler


def current() -> PodLogHandler | None:
    """The handler ``attach`` installed in this process, if any."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, PodLogHandler)), None)


def detach() -> None:
    """Remove and close ``attach``'s handler (main's end: a run in-process leaves none behind)."""
    handler = current()
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        handler.close()


def relay(source: IO[bytes], sink: IO[bytes], handler: PodLogHandler | None) -> threading.Thread:
    """Copy a rank's output to ``sink`` (the pod's stderr) and ``handler`` line by line, on a
    daemon thread, until the rank closes it. Never stops reading: a rank must not block on a
    full pipe because the log file or the sink failed."""

    def run() -> None:
        sink_ok = True
        for line in iter(source.readline, b""):
            if sink_ok:
                try:
                    sink.write(line)
                    sink.flush()
                except (OSError, ValueError):
                    sink_ok = False
            if handler is not None:
                handler.write_line(line.decode("utf-8", errors="replace"))
        source.close()

    thread = threading.Thread(target=run, name="rank-output", daemon=True)
    thread.start()
    return thread


def read(directory: Path, pods: list[str], max_bytes: int | None) -> Iterator[str]:
    """``read-logs``' output: per pod, JSON lines ``{"pod", "text"}`` of its files in order
    (at most the last ``max_bytes`` of them, after ``{"pod", "skipped": <bytes left out>}``),
    or one ``{"pod", "missing": true}``."""
    for pod in pods:
        if not _SAFE_NAME.match(pod):  # a pod name, never a path
            yield json.dumps({"pod": pod, "error": "not a pod name"})
            continue
        paths = [directory / n for n in file_names(pod) if (directory / n).is_file()]
        if not paths:
            yield json.dumps({"pod": pod, "missing": True})
            continue
        skip = 0
        if max_bytes is not None:
            skip = max(0, sum(p.stat().st_size for p in paths) - max_bytes)
        if skip:
            yield json.dumps({"pod": pod, "skipped": skip})
        for path in paths:
            try:
                with path.open("rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if skip >= size:
                        skip -= size
                        continue
                    f.seek(skip)
                    skip = 0
                    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                    while data := f.read(CHUNK):
                        yield json.dumps({"pod": pod, "text": decoder.decode(data)})
                    if tail := decoder.decode(b"", final=True):
                        yield json.dumps({"pod": pod, "text": tail})
            except OSError as exc:
                yield json.dumps({"pod": pod, "error": f"{path.name}: {exc.strerror or exc}"})


__all__ = [
    "LOG_DIR",
    "MAX_BYTES",
    "POD_ENV",
    "PodLogHandler",
    "attach",
    "current",
    "detach",
    "file_names",
    "log_dir",
    "pod_name",
    "read",
    "relay",
]

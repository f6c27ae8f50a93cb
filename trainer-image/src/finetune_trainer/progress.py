"""Progress reports to the job's ``<job>-progress`` ConfigMap (docs/contract.md, section 3).

A JSON merge-patch of one ``data`` key over HTTPS with the pod's ServiceAccount token and CA; plain
urllib, no kubernetes client. Outside a cluster (no token) the same data map is written to a local
JSON file (``FTO_PROGRESS_FILE``, default ``<work>/progress.local.json``) so tests can read it.
Reporting never raises: a failed report is logged and training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PROGRESS_KEY = "progress.json"
PREPARE_KEY = "prepare.json"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sink:
    """Where one ``data`` key is merged into."""

    def put(self, key: str, value: dict[str, Any]) -> None:
        raise NotImplementedError


class FileSink(Sink):
    """A local JSON file holding the ConfigMap's ``data`` map (values are JSON strings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            data: dict[str, str] = {}
            if self.path.exists():
                try:
                    data = json.loads(self.path.read_text())
                except (OSError, json.JSONDecodeError):
                    data = {}
            data[key] = json.dumps(value, sort_keys=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)


class ConfigMapSink(Sink):
    """JSON merge-patch of ``data.<key>`` on a ConfigMap via the API server."""

    def __init__(
        self, api_server: str, namespace: str, name: str, token_file: Path, ca_file: Path | None
    ) -> None:
        self.url = (
            f"{api_server.rstrip('/')}/api/v1/namespaces/{urllib.parse.quote(namespace)}"
            f"/configmaps/{urllib.parse.quote(name)}"
        )
        self.token_file = token_file
        self.context: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file and ca_file.exists() else None
            )

    def put(self, key: str, value: dict[str, Any]) -> None:
        # the token is re-read each time: projected tokens rotate
        token = self.token_file.read_text().strip()
        body = json.dumps({"data": {key: json.dumps(value, sort_keys=True)}}).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="PATCH",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
            response.read()


def make_sink(config: TrainerConfig) -> Sink:
    """ConfigMap sink in a cluster (ServiceAccount token present), file sink otherwise."""
    sa_dir = Path(os.environ.get("FTO_SERVICEACCOUNT_DIR", SA_DIR))
    token = sa_dir / "token"
    spec = config.progress
    api = spec.api_server
    if api is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        api = f"https://{host}:{port}"
    if spec.config_map and api and token.exists():
        namespace = spec.namespace or config.job.namespace
        return ConfigMapSink(api, namespace, spec.config_map, token, sa_dir / "ca.crt")
    path = Path(os.environ.get("FTO_PROGRESS_FILE", str(config.work / "progress.local.json")))
    log.info("not in a cluster (no ServiceAccount token); progress goes to %s", path)
    return FileSink(path)


class Reporter:
    """Throttled progress reports; ``force`` bypasses the throttle (checkpoints, the end)."""

    def __init__(
        self,
        sink: Sink,
        interval_seconds: float,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval = interval_seconds
        self.enabled = enabled
        self.clock = clock
        self._last = -float("inf")
        self.failures = 0

    def put(self, key: str, value: dict[str, Any]) -> bool:
        """Send one key now; False (and a log line) when it failed."""
        if not self.enabled:
            return False
        try:
            self.sink.put(key, value)
            return True
        except (OSError, urllib.error.URLError, ValueError, ssl.SSLError) as exc:
            self.failures += 1
            log.warning("progress report failed (training continues): %s", exc)
            return False
        except Exception as exc:  # never let reporting stop training
            self.failures += 1
            log.warning("progress report failed unexpectedly (training continues): %r", exc)
            return False

    def progress(self, value: dict[str, Any], *, force: bool = False) -> bool:
        """Report ``progress.json`` unless the last report is younger than the interval."""
        t = self.clock()
        if not force and t - self._last < self.interval:
            return False
        self._last = t
        return self.put(PROGRESS_KEY, {**value, "time": now_iso()})

"""Progress reports: throttling, the local file, the ConfigMap PATCH, failures never raise."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.config import parse_config
from finetune_trainer.progress import ConfigMapSink, FileSink, Reporter, make_sink


def config(work: Path, **progress: Any) -> Any:
    return parse_config(
        {
            "version": 1,
            "job": {"name": "j", "namespace": "ml"},
            "model": {"path": "/m"},
            "dataset": {"path": "/d"},
            "paths": {"work": str(work)},
            "progress": {"config_map": "j-progress", **progress},
        }
    )


def test_throttle_and_force(tmp_path: Path) -> None:
    now = [0.0]
    sink = FileSink(tmp_path / "p.json")
    r = Reporter(sink, 5.0, clock=lambda: now[0])
    assert r.progress({"step": 1})
    now[0] = 2.0
    assert not r.progress({"step": 2})
    assert r.progress({"step": 3}, force=True)
    now[0] = 7.1
    assert r.progress({"step": 4})
    data = json.loads((tmp_path / "p.json").read_text())
    assert json.loads(data["progress.json"])["step"] == 4


def test_failures_are_logged_not_raised(tmp_path: Path) -> None:
    class Broken(FileSink):
        def put(self, key: str, value: dict[str, Any]) -> None:
            raise OSError("disk on fire")

    r = Reporter(Broken(tmp_path / "x"), 0.0)
    assert r.progress({"step": 1}) is False and r.failures == 1


@pytest.fixture
def api_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(
                {
                    "path": self.path,
                    "auth": self.headers["Authorization"],
                    "type": self.headers["Content-Type"],
                    "body": json.loads(body),
                }
            )
            status = 403 if "forbidden" in self.path else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_configmap_merge_patch_with_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_server: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = api_server
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok-123\n")
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(sa))
    sink = make_sink(config(tmp_path, api_server=url))
    assert isinstance(sink, ConfigMapSink)
    assert Reporter(sink, 1.0).progress({"step": 3, "state": "running"})
    assert seen[0]["path"] == "/api/v1/namespaces/ml/configmaps/j-progress"
    assert seen[0]["auth"] == "Bearer tok-123"
    assert seen[0]["type"] == "application/merge-patch+json"
    value = json.loads(seen[0]["body"]["data"]["progress.json"])
    assert value["step"] == 3 and value["time"].endswith("Z")
    # an API error is logged and swallowed
    denied = make_sink(config(tmp_path, api_server=url, config_map="forbidden"))
    assert Reporter(denied, 1.0).progress({"step": 4}) is False


def test_outside_a_cluster_writes_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("FTO_PROGRESS_FILE", raising=False)
    sink = make_sink(config(tmp_path))
    assert isinstance(sink, FileSink) and sink.path == tmp_path / "progress.local.json"


def test_a_new_eval_loss_is_reported_at_once(tmp_path: Path) -> None:
    """Steps are throttled to the interval; an evaluation's result is not (callbacks.py)."""
    from types import SimpleNamespace

    from finetune_trainer.callbacks import ProgressCallback

    now = [0.0]
    sent: list[dict[str, Any]] = []

    class Recording(FileSink):
        def put(self, key: str, value: dict[str, Any]) -> None:
            sent.append(value)

    cb = ProgressCallback(Reporter(Recording(tmp_path / "p"), 30.0, clock=lambda: now[0]), 1, False)
    state = SimpleNamespace(global_step=1, max_steps=10, epoch=0.1, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    cb.on_step_end(None, state, None)  # the first step: at once
    now[0], state.global_step = 5.0, 2
    cb.on_step_end(None, state, None)  # 5 s later: throttled
    cb.on_evaluate(None, state, None, metrics={"eval_loss": 0.75})
    cb.on_evaluate(None, state, None, metrics={})  # no loss: nothing new
    assert [(v["step"], v["eval_loss"]) for v in sent] == [(1, None), (2, 0.75)]

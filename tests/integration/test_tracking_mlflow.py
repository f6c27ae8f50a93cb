"""spec.tracking.mlflow against a real MLflow tracking server (SQLite backend) started here.

The server comes from its own cached venv (hack/setup-mlflow.sh, keyed by MLFLOW_VERSION); the
trainer runs the real CLI on CPU with the tiny model and the mlflow-skinny client. The run's
per-step losses must arrive on the server, equal to the trainer's own summary, in an experiment
named after the job, tagged with it, under the run id the trainer recorded for resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import tracking
from finetune_trainer.tiny import make_tiny_model, synthetic_records, write_jsonl
from tests.harness.wait import wait_until
from tests.trainer.conftest import base_config, run_trainer, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    venv = subprocess.run(
        [str(ROOT / "hack" / "setup-mlflow.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    state = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (state / "server.log").open("w")
    proc = subprocess.Popen(
        [
            f"{venv}/bin/mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{state}/mlflow.db",
            "--artifacts-destination",
            str(state / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
            timeout=120,
            message=lambda: f"MLflow server up: {(state / 'server.log').read_text()[-2000:]}",
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def api(url: str, path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    full = f"{url}/api/2.0/mlflow/{path}"
    if query:
        full += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_run_metrics_arrive_on_a_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    model = make_tiny_model(tmp_path / "tiny", "llama", seed=0)
    work = tmp_path / "work"
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(48, seed=0))
    cfg = base_config(
        work,
        model,
        data,
        job={"name": "support-bot", "namespace": "ml", "attempt": 1},
        training={"max_steps": 5, "batch_size": 4},
        tracking={"tensorboard": False, "mlflow": {"tracking_uri": mlflow_server}},
    )
    path = write_config(tmp_path / "config.json", cfg)
    assert run_trainer("train", path, work) == 0, (work / "train.log").read_text()[-3000:]
    summary = json.loads((work / "output" / "summary.json").read_text())

    experiment = api(mlflow_server, "experiments/get-by-name", experiment_name="support-bot")
    runs = api(
        mlflow_server,
        "runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]]},
    )["runs"]
    assert len(runs) == 1
    run = runs[0]
    run_id = run["info"]["run_id"]
    assert run_id == summary["tracking"]["mlflow_run_id"] == tracking.recorded_run(work)
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
    assert tags["finetune.dev/job"] == "support-bot" and tags["finetune.dev/namespace"] == "ml"
    params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
    assert params["learning_rate"] == str(cfg["training"]["learning_rate"])

    history = api(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="loss")
    arrived = {m["step"]: m["value"] for m in history["metrics"]}
    expected = {e["step"]: e["loss"] for e in summary["losses"]}
    assert sorted(arrived) == sorted(expected) == [1, 2, 3, 4, 5]
    assert all(arrived[s] == pytest.approx(expected[s], rel=1e-6) for s in expected)

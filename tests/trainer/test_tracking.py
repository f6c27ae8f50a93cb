"""Experiment tracking: URL checks, the env the integrations read, credentials required when the
spec names a Secret, and a CPU run writing TensorBoard event files and an offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import tracking
from finetune_trainer.config import TrainerConfig, parse_config
from finetune_trainer.errors import ConfigError
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import base_config, run_trainer, write_config


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://mlflow.example.com", None),
        ("http://mlflow.ml.svc.cluster.local:5000/prefix", None),
        ("http://127.0.0.1:5000", None),  # a sidecar proxy
        ("http://[2001:db8::1]:5000", None),
        ("file:///tmp/mlruns", "http:// or https://"),
        ("databricks", "http:// or https://"),
        ("https://user:pw@mlflow.example.com", "credentials"),
        ("https://mlflow.example.com/?token=x", "query"),
        ("https://mlflow.example.com/#x", "query or fragment"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0:5000", "unspecified"),
        ("http://metadata.google.internal/", "metadata host"),
        ("http://METADATA.google.internal./", "metadata host"),
        ("https://", "no host"),
        ("http://bad_host!/", "bad host"),
        ("http://mlflow:99999", "not a URL"),
    ],
)
def test_tracking_url_checks(url: str, problem: str | None) -> None:
    found = tracking.url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def config(tmp_path: Path, **tracking_spec: Any) -> TrainerConfig:
    cfg = base_config(tmp_path, tmp_path / "model", tmp_path / "d.jsonl", tracking=tracking_spec)
    cfg["job"]["uid"] = "0123abcd-ffff"
    return parse_config(cfg)


def test_a_bad_tracking_uri_is_a_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="link-local"):
        config(tmp_path, mlflow={"tracking_uri": "http://169.254.169.254"})
    with pytest.raises(ConfigError, match="credentials"):
        config(tmp_path, wandb={"project": "p", "base_url": "https://a:b@wandb.example.com"})


def test_environment_tensorboard_only_by_default(tmp_path: Path) -> None:
    env = tracking.environment(config(tmp_path), {})
    assert env == {"TENSORBOARD_LOGGING_DIR": str(tmp_path / "tensorboard")}
    assert tracking.environment(config(tmp_path, tensorboard=False), {}) == {}


def test_environment_mlflow_and_resumed_run(tmp_path: Path) -> None:
    c = config(tmp_path, tensorboard=False, mlflow={"tracking_uri": "https://m.example.com"})
    env = tracking.environment(c, {})
    assert env["MLFLOW_TRACKING_URI"] == "https://m.example.com"
    assert env["MLFLOW_EXPERIMENT_NAME"] == "t"  # the job's name
    assert json.loads(env["MLFLOW_TAGS"]) == {
        "finetune.dev/job": "t",
        "finetune.dev/namespace": "ml",
    }
    assert env["HF_MLFLOW_LOG_ARTIFACTS"] == "FALSE"
    assert "MLFLOW_RUN_ID" not in env
    run = tmp_path / tracking.RUN_FILE
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"run_id": "ab" * 16}))
    assert tracking.environment(c, {})["MLFLOW_RUN_ID"] == "ab" * 16
    run.write_text(json.dumps({"run_id": "../../etc"}))  # not a run id: ignored
    assert "MLFLOW_RUN_ID" not in tracking.environment(c, {})


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({}, False),
        ({"MLFLOW_TRACKING_USERNAME": "u"}, False),
        ({"MLFLOW_TRACKING_TOKEN": "t"}, True),
        ({"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_PASSWORD": "p"}, True),
    ],
)
def test_mlflow_credentials_required_when_a_secret_is_named(
    tmp_path: Path, env: dict[str, str], ok: bool
) -> None:
    c = config(tmp_path, mlflow={"tracking_uri": "https://m.example.com", "credentials": True})
    if ok:
        assert tracking.environment(c, env)["MLFLOW_TRACKING_URI"] == "https://m.example.com"
    else:
        with pytest.raises(ConfigError, match="credentialsSecretRef"):
            tracking.environment(c, env)


def test_wandb_environment_offline_and_online(tmp_path: Path) -> None:
    c = config(tmp_path, wandb={"project": "p", "entity": "team"})
    env = tracking.environment(c, {})
    assert env["WANDB_MODE"] == "offline" and env["WANDB_PROJECT"] == "p"
    assert env["WANDB_ENTITY"] == "team" and env["WANDB_DIR"] == str(tmp_path / "tracking")
    assert env["WANDB_RUN_ID"] == "t-0123abcd" and env["WANDB_RESUME"] == "allow"
    online = config(tmp_path, wandb={"project": "p", "mode": "online"})
    with pytest.raises(ConfigError, match="apiKeySecretRef"):
        tracking.environment(online, {})
    assert tracking.environment(online, {"WANDB_API_KEY": "k"})["WANDB_MODE"] == "online"


def test_report_to_refuses_a_missing_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = config(tmp_path, mlflow={"tracking_uri": "https://m.example.com"})
    monkeypatch.setattr(tracking, "available", lambda package: package != "mlflow")
    with pytest.raises(ConfigError, match="mlflow-skinny"):
        tracking.report_to(c.tracking)
    monkeypatch.setattr(tracking, "available", lambda package: False)
    assert tracking.report_to(config(tmp_path).tracking) == []  # TensorBoard off, with a warning


def test_the_run_recorder_needs_mlflow_only_when_mlflow_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image without the mlflow package (the GPU base image) must train when MLflow is not
    asked for: every GPU-tier run once failed at train begin importing it."""
    import sys
    from types import SimpleNamespace

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    state = SimpleNamespace(is_world_process_zero=True)
    off = tracking.run_recorder(tmp_path, ["tensorboard"])
    off.on_train_begin(None, state, None)
    assert off.run_id is None and not (tmp_path / tracking.RUN_FILE).exists()
    on = tracking.run_recorder(tmp_path, ["mlflow"])
    with pytest.raises(ImportError):
        on.on_train_begin(None, state, None)


def scalars(directory: Path, tag: str) -> dict[int, float]:
    """step -> value of a scalar in TensorBoard event files (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[int, float] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at : at + 8])
            event = event_pb2.Event.FromString(raw[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = value.simple_value
    return out


@pytest.mark.slow
def test_cpu_run_writes_tensorboard_events_and_an_offline_wandb_run(
    tmp_path: Path, tiny_model: Path
) -> None:
    work = tmp_path / "work"
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(48, seed=0))
    cfg = base_config(
        work,
        tiny_model,
        data,
        training={"max_steps": 4, "batch_size": 4},
        tracking={"tensorboard": True, "wandb": {"project": "fto-test"}},
    )
    cfg["job"]["uid"] = "feedc0de-0000"
    path = write_config(tmp_path / "config.json", cfg)
    assert run_trainer("train", path, work) == 0, (work / "train.log").read_text()[-3000:]

    summary = json.loads((work / "output" / "summary.json").read_text())
    assert summary["tracking"]["report_to"] == ["tensorboard", "wandb"]
    losses = {e["step"]: e["loss"] for e in summary["losses"]}
    logged = scalars(work / "output" / "tensorboard", "train/loss")
    assert sorted(logged) == sorted(losses)  # every step's loss, copied into the output
    assert all(logged[s] == pytest.approx(losses[s], rel=1e-5) for s in losses)
    runs = list((work / "tracking" / "wandb").glob("offline-run-*-t-feedc0de"))
    assert summary["tracking"]["wandb_run_id"] == "t-feedc0de"
    assert len(runs) == 1, sorted(p.name for p in (work / "tracking").rglob("*"))[:20]
    assert list(runs[0].glob("*.wandb")), sorted(p.name for p in runs[0].iterdir())

"""Shared fixtures for the trainer tests: a tiny model built once, config factories, a runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Training on 2 shared cores: one BLAS thread per process is ~20x faster than oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + locally trained tokenizer (built once per session)."""
    import torch

    torch.set_num_threads(1)
    from finetune_trainer.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama", seed=0)


@pytest.fixture
def handlers() -> Iterator[None]:
    """stop.py's handlers installed in this process, its state fresh; both restored after."""
    import signal

    from finetune_trainer import stop

    old = {s: signal.getsignal(s) for s in stop.SIGNALS}
    stop.reset_for_tests()
    for s in stop.SIGNALS:
        signal.signal(s, stop._handler)
    yield
    stop.reset_for_tests()
    for s, h in old.items():
        signal.signal(s, h)


@pytest.fixture(scope="session")
def big_model_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Callable[[str], Path]:
    """A model directory with a real geometry's config.json and the tiny tokenizer (no weights)."""
    from finetune_trainer.tiny import NAMED_GEOMETRIES

    def make(name: str) -> Path:
        d = tmp_path_factory.mktemp("geometry") / name
        d.mkdir()
        for f in tiny_model.iterdir():
            if f.name.startswith(("tokenizer", "chat_template")):
                (d / f.name).write_bytes(f.read_bytes())
        (d / "config.json").write_text(json.dumps(NAMED_GEOMETRIES[name]))
        return d

    return make


def base_config(work: Path, model: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """A valid contract-v1 config dict for the tiny setup; nested keys merge one level deep."""
    cfg: dict[str, Any] = {
        "version": 1,
        "job": {"name": "t", "namespace": "ml", "attempt": 1},
        "model": {"path": str(model)},
        "dataset": {"path": str(data), "format": "alpaca"},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "epochs": 1,
            "learning_rate": 0.01,
            "batch_size": 8,
            "max_seq_length": 128,
            "gradient_checkpointing": False,
            "seed": 7,
        },
        "checkpoint": {"every_steps": 1000, "keep": 2},
        "gpus": 0,
        "paths": {"work": str(work), "model_cache": str(work / "cache")},
        "progress": {"config_map": "t-progress", "interval_seconds": 0.001},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def trainer_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        FTO_TERMINATION_LOG=str(work / "termination-log"),
        FTO_PROGRESS_FILE=str(work / "progress.local.json"),
        FTO_SERVICEACCOUNT_DIR=str(work / "no-serviceaccount"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def start_trainer(command: str, config: Path, work: Path) -> subprocess.Popen[str]:
    work.mkdir(parents=True, exist_ok=True)
    log = (work / f"{command}.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", command, "--config", str(config)],
        env=trainer_env(work),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_trainer(command: str, config: Path, work: Path, timeout: float = 240) -> int:
    proc = start_trainer(command, config, work)
    return proc.wait(timeout=timeout)


def progress_reports(work: Path) -> dict[str, Any]:
    """The data map the trainer wrote instead of the progress ConfigMap (values decoded)."""
    path = work / "progress.local.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: json.loads(v) for k, v in raw.items()}

"""Operator settings from FTO_* environment variables."""

from __future__ import annotations

import pytest

from finetune_operator.settings import Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FTO_NAMESPACES", "FTO_API_SERVER", "FTO_TRAINER_IMAGE"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.namespaces == [] and s.api_server is None
    assert s.image_pull_policy == "IfNotPresent"
    assert s.termination_grace_seconds == 0 and s.progress_interval_seconds == 30.0  # 0: derived


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTO_NAMESPACES", "ml, research ,")
    monkeypatch.setenv("FTO_TRAINER_IMAGE", "reg/trainer:1")
    monkeypatch.setenv("FTO_TERMINATION_GRACE_SECONDS", "900")
    monkeypatch.setenv("FTO_API_SERVER", "https://10.0.0.1:6443")
    monkeypatch.setenv("FTO_METRICS_PORT", "9100")
    s = Settings()
    assert s.namespaces == ["ml", "research"]
    assert s.trainer_image == "reg/trainer:1"
    assert s.termination_grace_seconds == 900
    assert s.api_server == "https://10.0.0.1:6443" and s.metrics_port == 9100


def test_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTO_TERMINATION_GRACE_SECONDS", "-1")
    with pytest.raises(ValueError, match="termination_grace_seconds"):
        Settings()

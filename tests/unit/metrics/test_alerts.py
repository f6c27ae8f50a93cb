"""The shipped alert rules (manifests/prometheus/alerts.yaml) under ``promtool test rules``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "manifests" / "prometheus" / "alerts.yaml"
TESTS = Path(__file__).with_name("alerts_test.yaml")


def _promtool(promtool: str, *args: str) -> str:
    proc = subprocess.run(
        [promtool, *args], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_rules_are_valid(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "check", "rules", str(RULES))


def test_rules_behave(promtool: str) -> None:
    out = _promtool(promtool, "test", "rules", str(TESTS))
    assert "SUCCESS" in out


def test_every_alert_has_a_test() -> None:
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])}
    assert shipped == tested

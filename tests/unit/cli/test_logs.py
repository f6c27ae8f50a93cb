"""``kubectl finetune logs``: the current attempt's pod, a note when it is gone (after a suspend
the plugin used to show the prepare pod silently), and ``--all`` across every attempt."""

from __future__ import annotations

import io
from typing import Any

import pytest

from finetune_operator import models as m
from finetune_operator.cli import diagnose
from finetune_operator.cli.api import CliError


def _pod(name: str, role: str, attempt: int, created: str) -> dict[str, Any]:
    labels = {m.LABEL_JOB: "bot", m.LABEL_ROLE: role, m.LABEL_ATTEMPT: str(attempt)}
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created}}


class _Api:
    namespace = "ml"

    def __init__(self, status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.status, self.pods = status, pods

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": self.status}

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self.pods

    def read_log(self, namespace: str, pod: str, container: str | None = None,
                 tail: int | None = None) -> str:  # fmt: skip
        if pod == "bot-3":
            raise CliError("container not started")
        return f"log of {pod}\n"


# attempt 1 suspended (its pod deleted), attempt 2 preempted (pod kept), attempt 3 pending
STATUS = {
    "phase": "Starting",
    "attempt": 3,
    "attempts": [
        {"attempt": 1, "pod": "bot-1", "reason": "Suspended"},
        {"attempt": 2, "pod": "bot-2", "reason": "Preempted"},
    ],
}
PODS = [
    _pod("bot-2", "train", 2, "2026-11-26T11:00:00Z"),
    _pod("bot-3", "train", 3, "2026-11-26T12:00:00Z"),
    _pod("bot-prepare", "prepare", 0, "2026-11-26T10:00:00Z"),
]


def test_all_lists_every_attempt_in_order_and_the_gone_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.BytesIO()
    assert diagnose.logs(_Api(STATUS, PODS), "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    assert out.getvalue().decode().splitlines() == [
        "==> pod bot-prepare (prepare) <==",
        "log of bot-prepare",
        "==> pod bot-1 (attempt 1, Suspended): gone, its log went with it <==",
        "==> pod bot-2 (attempt 2) <==",
        "log of bot-2",
        "==> pod bot-3 (attempt 3) <==",
        "(no log: container not started)",
    ]


def test_a_gone_current_pod_is_named_not_silently_replaced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = {**STATUS, "phase": "Suspended", "attempt": 1, "attempts": STATUS["attempts"][:1]}
    pods = [PODS[2]]
    out = io.BytesIO()
    assert diagnose.logs(_Api(status, pods), "bot", False, None, out) == 0  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "the pod of attempt 1 is gone" in err and "==> pod bot-prepare" in err
    assert out.getvalue() == b"log of bot-prepare\n"
    # the current attempt's pod present: no note
    out = io.BytesIO()
    status = {**STATUS, "attempt": 2}
    assert diagnose.logs(_Api(status, PODS), "bot", False, 10, out) == 0  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "gone" not in err and "==> pod bot-2" in err and out.getvalue() == b"log of bot-2\n"

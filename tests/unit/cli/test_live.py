"""The ``watch`` live view, recorded on a 100-column console and compared with snapshots.

Refresh the snapshots after an intended change with ``FTO_UPDATE_SNAPSHOTS=1 pytest ...``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

from finetune_operator.cli.live import live_view
from tests.unit.cli.conftest import EVENTS, JOBS, NOW

SNAPSHOTS = Path(__file__).with_name("snapshots")


def record(key: str) -> str:
    console = Console(record=True, width=100, force_terminal=True, color_system=None)
    console.print(live_view(JOBS[key], EVENTS if key != "pending" else [], NOW))
    return console.export_text()


@pytest.mark.parametrize("key", sorted(JOBS))
def test_live_view_snapshot(key: str) -> None:
    text = record(key)
    path = SNAPSHOTS / f"watch-{key}.txt"
    if os.environ.get("FTO_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_live_view_shows_what_the_brief_promises() -> None:
    text = record("running")
    for expected in ("Running", "120/400 steps (30%)", "1.42", "5120", "28m", "2 (ddp", "Running:"):
        assert expected in text
    assert "█" * 9 + "░" in text  # 30% of a 30-character bar

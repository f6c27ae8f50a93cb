"""bench/prepare_bench.py writes its line into its own section, never into a generated block."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_record_appends_inside_the_section_before_a_generated_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("prepare_bench", ROOT / "bench/prepare_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{module.HEADING}\n\n- old\n\n<!-- gpu:begin -->\n## GPU\n\nx\n")
    monkeypatch.setattr(module, "DOC", doc)
    module.record("- new")
    assert doc.read_text() == (
        f"# B\n\n{module.HEADING}\n\n- old\n- new\n\n<!-- gpu:begin -->\n## GPU\n\nx\n"
    )

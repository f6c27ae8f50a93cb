"""bench/planner_table.py: the current planner against the H100 results, and the docs section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planner_table", ROOT / "bench/planner_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_single_gpu_row_is_within_the_band() -> None:
    pt = _script()
    rows = pt.load(pt.RESULTS)
    single = [r for r in rows if r.gpus == 1]
    assert {(r.model, r.method) for r in single} == {
        ("1b", "full"), ("1b", "lora"), ("1b", "qlora"), ("7b", "lora"), ("7b", "qlora")
    }  # fmt: skip
    assert all(abs(r.ratio - 1) <= pt.TOLERANCE for r in single), pt.table(rows)


def test_section_is_replaced_and_neighbours_kept(tmp_path: Path) -> None:
    pt = _script()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\n## Before\n\nkeep\n\n"
        f"{pt.HEADING}\n\nold table\n\n<!-- other:begin -->\n## After\n\nkeep too\n"
    )
    pt.write_doc(f"{pt.HEADING}\n\nnew table\n", doc)
    text = doc.read_text()
    assert "old table" not in text and "new table" in text
    assert "## Before\n\nkeep" in text and "<!-- other:begin -->\n## After\n\nkeep too" in text
    pt.write_doc(f"{pt.HEADING}\n\nnew table\n", doc)
    assert doc.read_text() == text

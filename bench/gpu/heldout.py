"""Print the planner's estimate against the measured peak for the held-out geometries.

  heldout.py RESULTS.jsonl

Measured = torch ``max_memory_reserved`` of the train process + 800 MiB of CUDA context, as in
bench/planner_table.py and docs/benchmarks.md "Memory planner accuracy". Nothing is refitted here:
these geometries (Qwen2.5-3B-like, Gemma-2-2B-like) were not used to fit the planner's constants,
so a row outside the +-15 % band is a finding to report, not a number to tune away.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELD_OUT = ("qwen3b", "gemma2b")
CONTEXT_MIB = 800
BAND = 0.15


def rows(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("model") in HELD_OUT and rec.get("kind") in ("run", "ours-error"):
            out.append(rec)
    return out


def main(path: str) -> int:
    print("| model | method | r | seq | micro-batch | estimate MiB | measured MiB | ratio | band |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows(Path(path)):
        plan = r.get("plan") or {}
        assert isinstance(plan, dict)
        est = plan.get("estimated_gpu_memory_mib")
        cells = [r["model"], r.get("method"), r.get("lora_r"), r.get("seq"), r.get("mb")]
        key = "| " + " | ".join(str(c) for c in cells)
        if r["kind"] != "run" or est is None or not r.get("peak_reserved_gib"):
            print(f"{key} | {est} | failed: {str(r.get('reason', ''))[:80]} | | |")
            continue
        measured = round(float(str(r["peak_reserved_gib"])) * 1024) + CONTEXT_MIB
        ratio = float(est) / measured
        inside = "in" if abs(ratio - 1) <= BAND else "OUT"
        print(f"{key} | {est:,} | {measured:,} | {ratio:.2f} | {inside} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""What is alive on the GPU at a process's peak, grouped by the code that allocated it.

  memsnap.py train --config CFG      run `finetune-trainer train` in this process, recorded
  (bench.py imports ``start``/``report`` for the Unsloth stack when BENCH_MEMSNAP is set)

Recording starts before anything touches CUDA (torch.cuda.memory._record_memory_history with
Python stacks); at exit the allocator's trace is replayed to find the moment of most live bytes,
and the blocks alive then are summed per allocating frame (the innermost frame outside torch's own
modules). The summary (JSON) goes to $BENCH_MEMSNAP.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter
from typing import Any

_TORCH_INTERNAL = ("/torch/", "/contextlib.py", "/functools.py", "<frozen")


def start(*, at_exit: bool = True) -> None:
    import torch

    torch.cuda.memory._record_memory_history(max_entries=3_000_000, stacks="python")
    if at_exit:
        atexit.register(report)


def _owner(frames: list[dict[str, Any]]) -> str:
    outside = [f for f in frames if not any(t in f["filename"] for t in _TORCH_INTERNAL)]
    chosen = outside[:2] if outside else frames[:1]
    return " < ".join(f"{_short(f['filename'])}:{f['line']} {f['name']}" for f in chosen)


def _short(path: str) -> str:
    for marker in ("site-packages/", ".site/", "/src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Replay alloc/free events: the peak of live bytes and what was alive at it."""
    live: dict[int, dict[str, Any]] = {}
    current = peak = 0
    peak_at = 0
    for i, ev in enumerate(trace):
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            current += ev["size"]
            if current > peak:
                peak, peak_at = current, i
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            current -= live.pop(ev["addr"])["size"]
    live.clear()
    for ev in trace[: peak_at + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
        elif ev["action"] == "free_completed":
            live.pop(ev["addr"], None)
    groups: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for ev in live.values():
        key = _owner(ev.get("frames") or [])
        groups[key] += ev["size"]
        counts[key] += 1
    return {
        "peak_live_mib": round(peak / 2**20, 1),
        "events": len(trace),
        "peak_event": peak_at,
        "top": [
            {"mib": round(size / 2**20, 1), "blocks": counts[key], "where": key}
            for key, size in groups.most_common(30)
        ],
    }


def report() -> None:
    import torch

    out = os.environ.get("BENCH_MEMSNAP")
    if not out or not torch.cuda.is_available():
        return
    snapshot = torch.cuda.memory._snapshot()
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    result = summarise(trace)
    result["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    torch.cuda.memory._record_memory_history(enabled=None)


def main() -> None:
    if sys.argv[1:2] != ["train"]:
        raise SystemExit(__doc__)
    start(at_exit=False)
    from finetune_trainer import main as trainer_main

    code = trainer_main.main(sys.argv[1:])
    report()
    raise SystemExit(code)


if __name__ == "__main__":
    main()

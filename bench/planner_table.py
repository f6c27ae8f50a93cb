"""Memory planner accuracy: the current planner's estimate against measured H100 peaks.

Reads our trainer's runs (``"stack": "ours"``, ``"kind": "run"``) from the GPU bench results, asks
the planner in trainer-image/src (as it is now, not the version that ran the bench) for the same
model, method, sequence length, micro-batch and GPU count, and compares its per-GPU estimate with
the measured whole-card training peak: torch ``max_memory_reserved`` after the load + the CUDA
context, which the planner counts as ``cuda_context_mib`` (800 MiB).

Prints a markdown table, writes it into docs/benchmarks.md under "Memory planner accuracy"
(replacing that section) and plots docs/img/planner-accuracy.png.

  python bench/planner_table.py [--no-write]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer-image" / "src"))

from finetune_trainer import planner  # noqa: E402


def _geometries() -> dict[str, dict[str, Any]]:
    """GEOMETRIES of bench/gpu/bench.py (loaded by path; it imports torch only inside functions)."""
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench/gpu/bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.GEOMETRIES)


GEOMETRIES = _geometries()
RESULTS = [
    ROOT / "bench/gpu/results/2026-11-26-h100.jsonl",
    ROOT / "bench/gpu/results/2026-11-26-2xh100.jsonl",
    ROOT / "bench/gpu/results/2026-11-26-h100-full-optim.jsonl",
    ROOT / "bench/gpu/results/2026-11-26-h100-memory-nocompile.jsonl",
]
DOC = ROOT / "docs/benchmarks.md"
PLOT = ROOT / "docs/img/planner-accuracy.png"
HEADING = "## Memory planner accuracy"
TOLERANCE = 0.15
LORA_R = 16  # bench/gpu/ours.py


@dataclass(frozen=True)
class Row:
    backend: str  # unsloth (the default, block compile off) or unsloth-compiled
    model: str
    method: str
    seq: int
    micro: int
    gpus: int
    estimate_mib: int
    measured_mib: int

    @property
    def ratio(self) -> float:
        return self.estimate_mib / self.measured_mib


def backend_of(run: dict[str, Any]) -> planner.PlanBackend:
    """Runs without a variant ran with Unsloth's block compile on (the default until the
    no-block-compile matrix was measured); full fine-tuning never compiles blocks."""
    if run.get("variant") == "no-block-compile" or run["method"] == "full":
        return "unsloth"
    return "unsloth-compiled"


def current_estimate(run: dict[str, Any]) -> int:
    """The planner's per-GPU estimate today for the inputs of a bench run."""
    bench_plan = run["plan"]
    micro = int(bench_plan["micro_batch_size"])
    processes = int(bench_plan.get("processes") or 1)
    accumulation = int(bench_plan.get("gradient_accumulation") or 1)
    req = planner.PlanRequest(
        geometry=planner.Geometry.from_config(GEOMETRIES[run["model"]]),
        method=run["method"],
        batch_size=micro * accumulation * processes,
        max_seq_length=int(run["seq"]),
        gpus=int(run.get("gpus") or 1),
        gpu_memory_mib=bench_plan.get("gpu_memory_mib"),
        lora_r=LORA_R,
        micro_batch_size=micro,
        gradient_accumulation=accumulation,
        backend=backend_of(run),
    )
    return planner.plan(req).estimated_gpu_memory_mib


def load(paths: list[Path]) -> list[Row]:
    """One row per distinct (model, method, seq, micro-batch, GPUs); repeated runs keep the
    highest measured peak (the planner must cover the worst one)."""
    rows: dict[tuple[str, str, str, int, int, int], Row] = {}
    context = planner.CONSTANTS.cuda_context_mib
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            run = json.loads(line)
            if run.get("kind") != "run" or run.get("stack") != "ours":
                continue
            if not run.get("plan") or run.get("peak_reserved_gib") is None:
                continue
            if run.get("optimizer", "adamw_torch") != "adamw_torch":
                continue  # the planner models the default optimizer
            key = (
                backend_of(run),
                run["model"],
                run["method"],
                int(run["seq"]),
                int(run["plan"]["micro_batch_size"]),
                int(run.get("gpus") or 1),
            )
            measured = round(float(run["peak_reserved_gib"]) * 1024) + context
            if key in rows and rows[key].measured_mib >= measured:
                continue
            rows[key] = Row(*key, current_estimate(run), measured)
    return [rows[k] for k in sorted(rows)]


def table(rows: list[Row]) -> str:
    lines = [
        "| backend | model | method | seq | micro-batch | GPUs | estimate MiB | measured MiB "
        "| ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.model} | {r.method} | {r.seq} | {r.micro} | {r.gpus} | "
            f"{r.estimate_mib:,} | "
            f"{r.measured_mib:,} | {r.ratio:.2f} |"
        )
    return "\n".join(lines)


def section(rows: list[Row]) -> str:
    worst = max(abs(r.ratio - 1) for r in rows if r.gpus == 1)
    ddp = planner.CONSTANTS.ddp_overhead_mib
    context = planner.CONSTANTS.cuda_context_mib
    return f"""{HEADING}

The planner's per-GPU estimate (`trainer-image/src/finetune_trainer/planner.py` as it is now)
against our trainer's measured training peak on H100 with the unsloth backend, per process:
torch `max_memory_reserved` after the model load + {context} MiB of CUDA context (what the
planner counts as `context`). The measurements are from
`bench/gpu/results/2026-11-26-h100-memory-nocompile.jsonl` (backend `unsloth`: the trainer's
default, Unsloth's per-block compile off; `bench/gpu/run.sh memory_nocompile`),
`2026-11-26-h100.jsonl` and `2026-11-26-2xh100.jsonl`
(backend `unsloth-compiled`: `UNSLOTH_BLOCK_COMPILE=1`, which the prepare stage sees and plans
for; GPUs 2 = DDP, per process) and `2026-11-26-h100-full-optim.jsonl` (1B full); the estimates
are recomputed for the same inputs, so the table follows the planner.
Ratio = estimate / measured; every single-GPU row is within ±{TOLERANCE:.0%} (worst
{worst:.0%}). The DDP rows read high on purpose: the planner adds {ddp} MiB per process for
NCCL, which allocates outside torch's caching allocator and so is not in
`max_memory_reserved`. Regenerate with `python bench/planner_table.py`.

{table(rows)}

![planner estimate against measured peak](img/{PLOT.name})
"""


def write_doc(text: str, doc: Path = DOC) -> None:
    """Replace the section (up to the next ``## `` heading) or append it."""
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    # up to the next section, or a marker comment that opens another generator's section
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |^<!-- |\Z)", re.M | re.S)
    if pattern.search(current):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", current, count=1)
        new = new.rstrip("\n") + "\n"
    else:
        new = current.rstrip("\n") + ("\n\n" if current else "") + text
    doc.write_text(new, encoding="utf-8")


def plot(rows: list[Row], out: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    top = max(max(r.measured_mib, r.estimate_mib) for r in rows) * 1.1
    xs = [0, top]
    ax.plot(xs, xs, color="black", linewidth=1, label="estimate = measured")
    ax.fill_between(
        xs,
        [x * (1 - TOLERANCE) for x in xs],
        [x * (1 + TOLERANCE) for x in xs],
        color="tab:green",
        alpha=0.15,
        label=f"±{TOLERANCE:.0%}",
    )
    styles = {"lora": "o", "qlora": "s", "full": "^"}
    colors = {"1b": "tab:blue", "7b": "tab:orange"}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        label = f"{r.model} {r.method}"
        hollow = r.backend == "unsloth-compiled"
        ax.scatter(
            r.measured_mib,
            r.estimate_mib,
            marker=styles.get(r.method, "^"),
            color="none" if hollow else colors.get(r.model, "tab:gray"),
            edgecolor=colors.get(r.model, "tab:gray") if hollow else "none",
            linewidths=2 if r.gpus > 1 else 1,
            label=None if (r.model, r.method) in seen else label,
        )
        seen.add((r.model, r.method))
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("measured MiB per GPU (reserved + CUDA context)")
    ax.set_ylabel("planner estimate MiB per GPU")
    ax.set_title("Memory planner vs H100 (hollow = block compile on; thick = DDP)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rows = load(RESULTS)
    print(table(rows))
    if not args.no_write:
        write_doc(section(rows))
        plot(rows)
    outside = [r for r in rows if r.gpus == 1 and abs(r.ratio - 1) > TOLERANCE]
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())

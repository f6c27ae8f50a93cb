"""Turn the GPU benchmark's JSON lines into the "GPU" section of docs/benchmarks.md and PNG plots.

  python bench/gpu/report.py bench/gpu/results/2026-11-26-h100-smoke.jsonl \
      bench/gpu/results/2026-11-26-h100.jsonl bench/gpu/results/2026-11-26-2xh100.jsonl \
      bench/gpu/results/2026-11-26-h100-full-optim.jsonl \
      bench/gpu/results/2026-11-26-h100-memgap.jsonl \
      bench/gpu/results/2026-11-26-h100-resume-cache.jsonl \
      bench/gpu/results/2026-11-26-h100-nocompile.jsonl \
      bench/gpu/results/2026-11-26-h100-allocator.jsonl

Replaces everything between the markers <!-- gpu:begin --> and <!-- gpu:end --> in
docs/benchmarks.md (appending the section when the markers are absent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
PEAK = 782.5  # bf16 TFLOP/s measured on the same H100 (8192^3 matmul, median of 20)


def load(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                r["_file"] = Path(p).name
                rows.append(r)
    return rows


def pick(rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    found = [
        r for r in rows if r.get("kind") == "run" and all(r.get(k) == v for k, v in kw.items())
    ]
    return found[-1] if found else None


def gib(r: dict[str, Any] | None, key: str) -> str:
    return f"{r[key]:.2f}" if r and r.get(key) is not None else "–"


def num(r: dict[str, Any] | None, key: str) -> str:
    return f"{r[key]:,}" if r and r.get(key) is not None else "–"


def mfu(r: dict[str, Any] | None, gpus: int = 1) -> str:
    if not r or not r.get("tokens_per_second"):
        return "–"
    n = (
        r.get("plan", {}).get("parameters")
        or {"1b": 1_235_814_400, "7b": 7_248_023_552}[r["model"]]
    )
    return f"{6 * n * r['tokens_per_second'] / gpus / (PEAK * 1e12):.1%}"


def stacks_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| model / method / data | micro-batch | (a) transformers+PEFT tok/s | (b) Unsloth tok/s | "
        "(c) finetune-trainer tok/s | (c)/(b) | (c)/(a) | peak reserved GiB a / b / c | "
        "MFU a / b / c | final loss a / b / c |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, method, data, mb in [
        ("1b", "lora", "fixed", 8),
        ("7b", "qlora", "fixed", 4),
        ("7b", "lora", "fixed", 4),
        ("7b", "qlora", "realistic", 4),
    ]:
        a = pick(rows, stack="hf", model=model, method=method, data=data)
        documented = [r for r in rows if r.get("optimizer", "adamw_8bit") == "adamw_8bit"]
        b = pick(documented, stack="unsloth", model=model, method=method, data=data)
        c = next(
            (
                r
                for r in rows
                if r.get("kind") == "run"
                and r.get("stack") == "ours"
                and r.get("model") == model
                and r.get("method") == method
                and r.get("data") == data
                and r.get("gpus") == 1
                and not r.get("cap_gib")
                and r.get("seq") == 2048
                and r.get("steps_measured", 0) >= 19
                and r.get("optimizer", "adamw_torch") == "adamw_torch"
            ),
            None,
        )

        def ratio(x: dict[str, Any] | None, y: dict[str, Any] | None) -> str:
            if x and y and x.get("tokens_per_second") and y.get("tokens_per_second"):
                return f"{x['tokens_per_second'] / y['tokens_per_second']:.2f}×"
            return "–"

        def loss(r: dict[str, Any] | None) -> str:
            return f"{r['losses'][-1]:.3f}" if r and r.get("losses") else "–"

        out.append(
            f"| {model.upper()} {method} {data} | {mb} | {num(a, 'tokens_per_second')} | "
            f"{num(b, 'tokens_per_second')} | {num(c, 'tokens_per_second')} | {ratio(c, b)} | "
            f"{ratio(c, a)} | {gib(a, 'peak_reserved_gib')} / {gib(b, 'peak_reserved_gib')} / "
            f"{gib(c, 'peak_reserved_gib')} | {mfu(a)} / {mfu(b)} / {mfu(c)} | "
            f"{loss(a)} / {loss(b)} / {loss(c)} |"
        )
    return out


def ddp_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run (one pod, one process per GPU) | 1 GPU tok/s | 2 GPUs tok/s | scaling | "
        "peak reserved per GPU 1 → 2 | MFU per GPU (2 GPUs) |",
        "|---|---|---|---|---|---|",
    ]
    two = [
        r for r in rows if r.get("_file", "").endswith("2xh100.jsonl") and r.get("kind") == "run"
    ]
    for model, method, mb in [("7b", "qlora", 4), ("1b", "lora", 8)]:
        one = pick(two, model=model, method=method, gpus=1)
        dual = next(
            (
                r
                for r in two
                if r["model"] == model
                and r["method"] == method
                and r["gpus"] == 2
                and not r.get("cap_gib")
            ),
            None,
        )
        if not one or not dual:
            continue
        out.append(
            f"| finetune-trainer {model.upper()} {method}, micro-batch {mb} | "
            f"{one['tokens_per_second']:,} | {dual['tokens_per_second']:,} | "
            f"{dual['tokens_per_second'] / one['tokens_per_second']:.3f}× | "
            f"{one['peak_reserved_gib']:.2f} → {dual['peak_reserved_gib']:.2f} | {mfu(dual, 2)} |"
        )
    return out


def cap_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | GPUs | cap | planner's micro-batch | estimate | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("kind") == "ours-error" and "PlanRefused" in r.get("reason", ""):
            out.append(
                f"| 7B QLoRA seq 2048 | 1 | 4 GiB | – | – | refused by the prepare stage "
                f"before any GPU work (exit {r.get('code')}): {r['reason']} |"
            )
            continue
        if r.get("stack") != "ours" or not r.get("cap_gib"):
            continue
        plan = r.get("plan") or {}
        est = plan.get("estimated_gpu_memory_mib")
        if r["kind"] == "run":
            res = (
                f"trained: {r['tokens_per_second']:,} tok/s, peak reserved "
                f"{r['peak_reserved_gib']:.2f} GiB"
            )
        else:
            res = f"refused before training (exit {r.get('code')}): {r.get('reason', '')[:160]}"
        out.append(
            f"| 7B QLoRA seq 2048 | {r.get('gpus', 1)} | {r['cap_gib']:.0f} GiB | "
            f"{plan.get('micro_batch_size', '–')} | {est:,} MiB | {res} |"
            if est
            else f"| {r.get('model')} | {r.get('gpus')} | {r['cap_gib']} | – | – | {res} |"
        )
    return out


def full_table(rows: list[dict[str, Any]]) -> list[str]:
    """1B full fine-tuning: our trainer over the planner matrix, and Unsloth directly."""
    out = [
        "| stack | seq | micro-batch | tok/s | MFU | peak allocated GiB | peak reserved GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    full = [r for r in rows if r.get("kind") == "run" and r.get("method") == "full"]
    for r in sorted(full, key=lambda r: (r["stack"] != "ours", r.get("seq"), r.get("mb"))):
        name = "(c) finetune-trainer" if r["stack"] == "ours" else "(b) Unsloth"
        out.append(
            f"| {name} | {r.get('seq')} | {r.get('mb')} | {num(r, 'tokens_per_second')} | "
            f"{mfu(r)} | {gib(r, 'peak_allocated_gib')} | {gib(r, 'peak_reserved_gib')} |"
        )
    return out


def fixed_runs(
    rows: list[dict[str, Any]], model: str, method: str, mb: int | None = None
) -> list[dict[str, Any]]:
    """One-GPU, uncapped runs on fixed 2,048-token data with a full measurement window."""
    return [
        r
        for r in rows
        if r.get("kind") == "run" and r.get("model") == model and r.get("method") == method
        and r.get("data") == "fixed" and r.get("gpus", 1) == 1 and not r.get("cap_gib")
        and r.get("seq") == 2048 and r.get("steps_measured", 0) >= 19
        and (mb is None or r.get("mb") == mb)
    ]  # fmt: skip


def first_run(
    runs: list[dict[str, Any]], stack: str, optimizer: str | None = None, variant: str | None = None
) -> dict[str, Any] | None:
    """The first run of a stack with an optimizer (default: the stack's own) and variant."""
    default = "adamw_8bit" if stack == "unsloth" else "adamw_torch"
    return next(
        (
            r
            for r in runs
            if r.get("stack") == stack
            and r.get("optimizer", default) == (optimizer or default)
            and r.get("variant") == variant
        ),
        None,
    )


def memory_cell(r: dict[str, Any] | None, *, with_mfu: bool = False) -> str:
    if not r:
        return "–"
    cell = (
        f"{num(r, 'tokens_per_second')} tok/s, {gib(r, 'peak_allocated_gib')} / "
        f"{gib(r, 'peak_reserved_gib')} GiB"
    )
    return f"{cell}, MFU {mfu(r)}" if with_mfu else cell


def block_compile_table(rows: list[dict[str, Any]]) -> list[str]:
    """(c) with Unsloth's per-block torch.compile (the rows above) and without (the default)."""
    out = [
        "| model / method (fixed, seq 2048) | (b) Unsloth | (c) block compile on | "
        "(c) block compile off | (c) off + expandable segments (default) | default: tok/s vs (b) "
        "| default: allocated / reserved vs (b) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, method, mb in [("1b", "lora", 8), ("7b", "qlora", 4)]:
        runs = fixed_runs(rows, model, method, mb)
        b = first_run(runs, "unsloth")
        on = first_run(runs, "ours")
        off = first_run(runs, "ours", variant="no-block-compile")
        default = first_run(runs, "ours", variant="no-block-compile+expandable")
        speed = vs = "–"
        if b and default:
            speed = f"{default['tokens_per_second'] / b['tokens_per_second']:.2f}×"
            vs = (
                f"{default['peak_allocated_gib'] / b['peak_allocated_gib']:.3f}× / "
                f"{default['peak_reserved_gib'] / b['peak_reserved_gib']:.3f}×"
            )
        cells = " | ".join(memory_cell(r, with_mfu=True) for r in (b, on, off, default))
        out.append(f"| {model.upper()} {method} | {cells} | {speed} | {vs} |")
    return out


def optimizer_table(rows: list[dict[str, Any]]) -> list[str]:
    """Peak memory like for like: (b) and (c), each with both optimizers, and (c) with TRL's
    gradient-checkpointing flag on as (b) leaves it."""
    out = [
        "| model / method (fixed, seq 2048) | (b) adamw_8bit (its docs) | (b) adamw_torch | "
        "(c) adamw_torch (default) | (c) adamw_8bit | (c) + TRL gradient_checkpointing |",
        "|---|---|---|---|---|---|",
    ]
    for model, method in [("1b", "lora"), ("7b", "qlora")]:
        runs = fixed_runs(rows, model, method)
        picked = (
            first_run(runs, "unsloth"),
            first_run(runs, "unsloth", "adamw_torch"),
            first_run(runs, "ours"),
            first_run(runs, "ours", "adamw_8bit"),
            first_run(runs, "ours", variant="hf-gc"),
        )
        out.append(f"| {model.upper()} {method} | " + " | ".join(map(memory_cell, picked)) + " |")
    return out


def startup_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| what | 1B LoRA | 7B QLoRA |", "|---|---|---|"]

    def first(model: str, method: str, stack: str) -> str:
        vals = [
            r["first_step_seconds"]
            for r in rows
            if r.get("kind") == "run"
            and r.get("stack") == stack
            and r.get("model") == model
            and r.get("method") == method
            and r.get("first_step_seconds")
            and r.get("gpus", 1) == 1
            and r.get("steps_measured", 0) >= 5
        ]
        return (
            f"{min(vals):.1f} s (median {sorted(vals)[len(vals) // 2]:.1f} s, n={len(vals)})"
            if vals
            else "–"
        )

    for stack, name in [
        ("hf", "(a) process start → first optimizer step (1)"),
        ("unsloth", "(b) process start → first optimizer step (1)"),
        ("ours", "(c) process start → first optimizer step (train pod; prepare ran before) (1)"),
    ]:
        out.append(f"| {name} | {first('1b', 'lora', stack)} | {first('7b', 'qlora', stack)} |")
    resumes = [r for r in rows if r.get("kind") == "resume"]
    for label, kept in (
        ("machine-wide caches warm from earlier runs", False),
        ("fresh machine; compile cache on the work volume", True),
    ):
        res = {r["model"]: r for r in resumes if bool(r.get("compile_cache_kept")) == kept}
        if not res:
            continue
        if kept:
            out.append(
                f"| (c) first start on a fresh volume → first step ({label}; progress polled "
                "every 1 s, so at most) | "
                + " | ".join(
                    f"{res[m]['cold_start_to_first_step_seconds_at_most']} s" if m in res else "–"
                    for m in ("1b", "7b")
                )
                + " |"
            )
        out.append(
            f"| SIGTERM → checkpoint written → exit 10 (time to pause; {label}) | "
            + " | ".join(
                f"{res[m]['pause_seconds']} s (at step {res[m]['sigterm_at_step']}, "
                f"{res[m]['checkpoint']})"
                if m in res
                else "–"
                for m in ("1b", "7b")
            )
            + " |"
        )
        out.append(
            f"| restart → first step after resume ({label}) | "
            + " | ".join(
                f"{res[m]['restart_to_first_step_seconds']} s (resumed from "
                f"{res[m]['resumed_from']}, ran to step {res[m]['steps']})"
                if m in res
                else "–"
                for m in ("1b", "7b")
            )
            + " |"
        )
    return out


def plots(rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    cases = [
        ("1b", "lora", "fixed"),
        ("7b", "qlora", "fixed"),
        ("7b", "lora", "fixed"),
        ("7b", "qlora", "realistic"),
    ]
    labels = [f"{m.upper()} {meth}\n{d}" for m, meth, d in cases]
    series: dict[str, list[float]] = {
        "transformers+PEFT": [],
        "Unsloth": [],
        "finetune-trainer": [],
    }
    mem: dict[str, list[float]] = {k: [] for k in series}
    for model, method, data in cases:
        for key, stack in (
            ("transformers+PEFT", "hf"),
            ("Unsloth", "unsloth"),
            ("finetune-trainer", "ours"),
        ):
            r = next(
                (
                    x
                    for x in rows
                    if x.get("kind") == "run"
                    and x.get("stack") == stack
                    and x.get("model") == model
                    and x.get("method") == method
                    and x.get("data") == data
                    and x.get("gpus", 1) == 1
                    and not x.get("cap_gib")
                    and x.get("seq", 2048) == 2048
                    and x.get("steps_measured", 0) >= 19
                ),
                None,
            )
            series[key].append((r or {}).get("tokens_per_second") or 0)
            mem[key].append((r or {}).get("peak_reserved_gib") or 0)
    names = []
    for data, fname, ylabel in (
        (series, "gpu-tokens-per-second.png", "real tokens / s"),
        (mem, "gpu-peak-memory.png", "peak reserved GiB (training)"),
    ):
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.27
        for i, (k, v) in enumerate(data.items()):
            ax.bar([x + (i - 1) * width for x in range(len(cases))], v, width, label=k)
        ax.set_xticks(range(len(cases)), labels)
        ax.set_ylabel(ylabel)
        ax.set_title(f"one H100 80GB, seq 2048 ({'tokens/s' if 'tokens' in fname else 'memory'})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(IMG / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    return names


def main(paths: list[str]) -> None:
    rows = load(paths)
    pngs = plots(rows)
    lines = [
        BEGIN,
        "## GPU: transformers+PEFT vs Unsloth vs finetune-trainer",
        "",
        f"Measured 2026-11-26 on one NVIDIA H100 80GB HBM3 (driver 580.159.04) and on a host "
        f"with two of them, torch 2.11.0+cu130, transformers 5.17.0, trl 1.15.0, peft 0.21.0, "
        f"unsloth 2026.10.9, bitsandbytes 0.50.2, with random-initialised models built from "
        f"configs (Llama-3.2-1B geometry, 1.236 B parameters; Mistral-7B-v0.3 geometry, 7.248 "
        f"B), LoRA r=16 on the 7 projections, seq 2048. Command: `bench/gpu/run.sh stacks1b "
        f"stacks7b_fixed stacks7b_more hfreal cap12 resume memory_ours full1b optim8` (one GPU) "
        f"and "
        f"`bench/gpu/run.sh ddp` (two), raw lines in `bench/gpu/results/`. (a) = transformers + "
        f"PEFT + TRL SFTTrainer with SDPA and gradient checkpointing; (b) = Unsloth as its "
        f"documentation shows (FastLanguageModel, get_peft_model, TRL SFTTrainer, adamw_8bit); "
        f"(c) = `finetune-trainer prepare` then `finetune-trainer train` with a contract "
        f"config.json, exactly as the Pods run them (backend auto → unsloth; these rows with "
        f"Unsloth's per-block compile on, the default when they ran). Tokens/s counts "
        f"real (non-padding) tokens, median of 19 step intervals after 5 warm-up steps. MFU = "
        f"6·N·tokens/s ÷ {PEAK} TFLOP/s (bf16 peak measured on the same GPU, 8192³ matmul); "
        f"attention FLOPs are not counted, as in the peer numbers. Peak memory is "
        f"`torch.cuda.max_memory_reserved` during training (the CUDA context, ~0.8 GiB, is not "
        f"in it). Data: *fixed* = 2,048-token rows of random ids; *realistic* = Alpaca-like "
        f"lengths (log-normal, median 174, mean 264, tail to 2,048).",
        "",
        *stacks_table(rows),
        "",
        *(f"![{p}](img/{p})" for p in pngs),
        "",
        "### Unsloth's per-block torch.compile: on (the rows above) and off (the default now)",
        "",
        "Command: `bench/gpu/run.sh nocompile`. Compiled decoder blocks are 2 % faster but their "
        "backward keeps more buffers alive at once: at the 1B LoRA peak 6 × 256 MiB of "
        "inductor buffers (matmul_lora and the SwiGLU backward) where the eager path holds 3 "
        "(`bench/gpu/memsnap.py`, `bench/gpu/results/2026-11-26-h100-memsnap-*.json`: 4,901 vs "
        "4,074 MiB live at the peak). (b) never compiles them here: TRL hands Unsloth its "
        "batches as packed segments, which skip the block compile. The trainer leaves it off "
        "unless the pod sets `UNSLOTH_BLOCK_COMPILE=1` (`spec.podTemplate.env`). Command for the "
        "last column: `bench/gpu/run.sh allocator`: the trainer now sets the allocator's "
        "`expandable_segments` before its device check starts CUDA (Unsloth sets it on import, "
        "which was too late for the allocator, hence 0.5 GiB of reserved slack before).",
        "",
        *block_compile_table(rows),
        "",
        "### Peak memory like for like (allocated / reserved)",
        "",
        "Commands: `bench/gpu/run.sh optim8` and `bench/gpu/run.sh memgap` (the TRL flag run edits "
        "the installed trainer for that one run).",
        "",
        *optimizer_table(rows),
        "",
        "### 1B full fine-tuning",
        "",
        "Command: `bench/gpu/run.sh full1b` (one run at a time: a full checkpoint with its "
        "optimizer state is ~15 GB). Our trainer keeps the default `adamw_torch`, (b) follows "
        "Unsloth's docs (`adamw_8bit`); both train the bf16 weights in place.",
        "",
        *full_table(rows),
        "",
        "### Two GPUs (data parallel, one pod, two processes)",
        "",
        *ddp_table(rows),
        "",
        "### The RTX 3060 story: 12 GiB per process",
        "",
        "`gpu_memory_mib` in the config (from the node's `nvidia.com/gpu.memory` label) both plans "
        "the job and holds each process to that much memory "
        "(`torch.cuda.set_per_process_memory_fraction`), so an H100 behaves as a 12 GiB card.",
        "",
        *cap_table(rows),
        "",
        "### Start-up, pause and resume",
        "",
        *startup_table(rows),
        "",
        "(1) Runs of one benchmark session on one machine, in order: torch.compile's kernel cache "
        "(`/tmp/torchinductor_root`) and Unsloth's compile cache (`~/.cache/unsloth`) were warm "
        "from the runs before, which a new Pod never has. Unsloth compiles every decoder block on "
        "the first step; cold, that first step alone took 35.9 s for 7B QLoRA "
        "(`bench/gpu/results/logs/2026-11-26-h100-7b-qlora-train.log`). The trainer keeps the "
        "compile cache on the job's work volume, so a resumed attempt reuses it (last rows).",
        END,
    ]
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(block)


if __name__ == "__main__":
    main(sys.argv[1:])

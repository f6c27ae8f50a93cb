"""Time the prepare stage on a 10,000-record dataset and record it in docs/benchmarks.md.

Builds the tiny Llama model + tokenizer and a synthetic alpaca dataset locally (no hub), then runs
``finetune-trainer prepare`` twice as a subprocess (cold: validate + tokenize + save + plan; warm:
reused by content hash) and writes one line under the "Prepare stage" heading of
docs/benchmarks.md with the command, machine and date.

    python bench/prepare_bench.py [--records 10000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Prepare stage"


def run_prepare(config: Path, work: Path) -> tuple[float, dict[str, object]]:
    env = dict(
        os.environ,
        FTO_TERMINATION_LOG=str(work / "termination-log"),
        FTO_PROGRESS_FILE=str(work / "progress.local.json"),
        FTO_SERVICEACCOUNT_DIR=str(work / "no-sa"),
    )
    start = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_trainer.main",
            "--log-level",
            "WARNING",
            "prepare",
            "--config",
            str(config),
        ],
        env=env,
        check=True,
    )
    seconds = time.monotonic() - start
    return seconds, json.loads((work / "prepare-result.json").read_text())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({cpu}), Python {platform.python_version()}"


def record(line: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n"
    start = text.index(HEADING) + len(HEADING)
    # the section ends at the next heading or at the marker of a generated block before one
    ends = [i for i in (text.find("\n## ", start), text.find("\n<!--", start)) if i >= 0]
    nxt = min(ends) if ends else -1
    section = text[start:] if nxt < 0 else text[start:nxt]
    section = (section.rstrip("\n") or "\n") + "\n" + line + "\n"
    text = text[:start] + section + ("" if nxt < 0 else "\n" + text[nxt + 1 :])
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the doc")
    args = parser.parse_args()

    from finetune_trainer.tiny import make_tiny_model, synthetic_records, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model = make_tiny_model(t / "model", "llama", seed=0)
        data = write_jsonl(t / "train.jsonl", synthetic_records(args.records, seed=0))
        work = t / "work"
        config = t / "config.json"
        config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "job": {"name": "bench"},
                    "model": {"path": str(model)},
                    "dataset": {"path": str(data), "format": "alpaca", "validation_split": 0.05},
                    "method": "lora",
                    "training": {"batch_size": 16, "max_seq_length": 512},
                    "gpus": 1,
                    "gpu_memory_mib": 12288,
                    "paths": {"work": str(work), "model_cache": str(t / "cache")},
                }
            )
        )
        cold, result = run_prepare(config, work)
        manifest = json.loads((work / str(result["prepared_path"]) / "manifest.json").read_text())
        warm, again = run_prepare(config, work)
        assert again["reused"] is True
    data_info = result["data"]
    assert isinstance(data_info, dict)
    line = (
        f"- {datetime.now(UTC):%Y-%m-%d}: {args.records:,} alpaca records "
        f"({data_info['tokens']:,} tokens, tiny-Llama BPE tokenizer, maxSeqLength 512): "
        f"**{cold:.1f} s** cold for the whole `prepare` process (of which "
        f"{manifest['prepare_seconds']:.1f} s read + validate + tokenize + save Arrow, the rest "
        f"Python/torch/transformers start-up and the plan), {warm:.1f} s when reused by hash; "
        f"machine: {machine()}; "
        f"command: `python bench/prepare_bench.py --records {args.records}`"
    )
    print(line)
    if not args.no_write:
        record(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

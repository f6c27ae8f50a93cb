"""Run finetune-trainer exactly as the operator's Pods do: a contract config.json, `prepare`, then
`train`, as separate processes, and read the numbers from what the trainer writes (summary.json).

  ours.py --model DIR --model-tag 7b --method qlora --shape fixed --gpus 1 [--mb 4] [--cap-gib 12]
  ours.py --resume-test ...      SIGTERM after a few steps, measure time to pause and time from
                                 restart to the first step after resume; check the step continues
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import emit, ids_to_text, tokenizer_kind


def text_dataset(
    shape: str, vocab: int, out: Path, kind: str = "words", max_len: int = 2048
) -> Path:
    """The benchmark's token ids as text of the bench's tokenizer of ``kind`` (bench.py
    ids_to_text): same tokens (words) or same lengths (bytes)."""
    suffix = "" if max_len == 2048 else f"-{max_len}"
    src = Path(os.environ["BENCH_DIR"]) / f"d-{shape}-{vocab}{suffix}.jsonl"
    if not src.exists():
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parent / "bench.py"),
                "make-data",
                "--shape",
                shape,
                "--vocab",
                str(vocab),
                "--n",
                "2000",
                "--max-len",
                str(max_len),
                "--out",
                str(src),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if not out.exists():
        with src.open() as f, out.open("w") as g:
            for line in f:
                # one token fewer than the raw row: the trainer appends EOS to text records
                ids = json.loads(line)["input_ids"][:-1]
                g.write(json.dumps({"text": ids_to_text(ids, kind)}) + "\n")
    return out


def config(a: argparse.Namespace, work: Path, data: Path) -> dict[str, Any]:
    mb = a.mb or None
    return {
        "version": 1,
        "job": {
            "name": f"bench-{a.model_tag}-{a.method}",
            "namespace": "bench",
            "uid": "0",
            "attempt": 1,
        },
        "model": {"name": None, "path": a.model, "revision": None, "trust_remote_code": False},
        "dataset": {
            "url": None,
            "path": str(data),
            "hub": None,
            "split": "train",
            "format": "text",
            "fields": {},
            "validation_split": 0.0,
        },
        "method": a.method,
        "lora": {"r": a.lora_r, "alpha": a.lora_r, "dropout": 0.0, "target_modules": None},
        "training": {
            "epochs": 1.0,
            "max_steps": a.steps,
            "learning_rate": 2e-4,
            "batch_size": (a.mb or 4) * max(a.gpus, 1) * a.accum,
            "micro_batch_size": mb,
            "gradient_accumulation": a.accum if mb else None,
            "max_seq_length": a.seq,
            "warmup_steps": 0,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "optimizer": a.optimizer,
            "weight_decay": 0.0,
            "seed": 3407,
            "precision": "auto",
            "packing": a.shape == "realistic",
            "gradient_checkpointing": True,
        },
        "checkpoint": {"every_steps": a.checkpoint_every, "keep": 2},
        "output": {"merge_adapter": False},
        "backend": a.backend,
        "gpus": a.gpus,
        "gpu_memory_mib": int(a.cap_gib * 1024) if a.cap_gib else 81559,
        "paths": {"work": str(work), "model_cache": str(work / "cache")},
        "progress": {
            "config_map": "bench-progress",
            "namespace": "bench",
            "interval_seconds": 1.0 if a.resume_test else 5.0,
            "api_server": None,
        },
        "hub_token_file": None,
    }


def trainer(cmd: str, cfg: Path, env: dict[str, str], **kw: Any) -> subprocess.Popen[bytes]:
    entry = ["-m", "finetune_trainer"]  # the pods' entry: handlers first, then the prefetch
    if cmd == "train" and env.get("BENCH_MEMSNAP"):  # the same entry, with memory recording
        entry = [str(Path(__file__).parent / "memsnap.py")]
    return subprocess.Popen([sys.executable, *entry, cmd, "--config", str(cfg)], env=env, **kw)


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a process's log: the traceback of a failed run, kept in its result line."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--model-tag", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--shape", default="fixed")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--mb", type=int, default=0)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--cap-gib", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--resume-test", action="store_true")
    p.add_argument("--optimizer", default="adamw_torch")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--backend", default="auto")
    p.add_argument("--keep-log", action="store_true", help="copy the train log to $OUT")
    a = p.parse_args()
    vocab = json.loads((Path(a.model) / "config.json").read_text())["vocab_size"]
    root = Path(os.environ["BENCH_DIR"])
    name = f"{a.model_tag}-{a.method}-{a.shape}-{a.gpus}-{a.mb}-{a.cap_gib}-{a.seq}-r{a.lora_r}"
    work = root / f"ours-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    kind = tokenizer_kind(a.model)
    sfx = "" if a.seq == 2048 else f"-{a.seq}"
    text = root / f"t-{a.shape}-{vocab}-{kind}{sfx}.jsonl"
    data = text_dataset(a.shape, vocab, text, kind, a.seq)
    if a.resume_test:
        a.steps, a.checkpoint_every = 40, 1000
    cfg = work / "config.json"
    cfg.write_text(json.dumps(config(a, work, data)))
    env = dict(
        os.environ,
        FTO_PROGRESS_FILE=str(work / "progress.json"),
        FTO_TERMINATION_LOG=str(work / "termination-log"),
    )
    t = time.time()
    prep = trainer("prepare", cfg, env)
    if prep.wait() != 0:
        emit(
            {
                "kind": "ours-error",
                "stage": "prepare",
                "code": prep.returncode,
                "reason": (work / "termination-log").read_text()
                if (work / "termination-log").exists()
                else "",
            }
        )
        return
    prepare_seconds = round(time.time() - t, 1)
    result = json.loads((work / "prepare-result.json").read_text())
    tag = {
        "stack": "ours",
        "model": a.model_tag,
        "method": a.method,
        "data": a.shape,
        "gpus": a.gpus,
        "cap_gib": a.cap_gib,
        "optimizer": a.optimizer,
        "lora_r": a.lora_r,
        "backend_asked": a.backend,
        "variant": os.environ.get("BENCH_VARIANT"),
        "prepare_seconds": prepare_seconds,
        "plan": result.get("plan"),
    }
    if a.resume_test:
        resume_test(a, cfg, env, work, tag)
        return
    t = time.time()
    with (work / "train.log").open("wb") as log:
        code = trainer("train", cfg, env, stdout=log, stderr=subprocess.STDOUT).wait()
    summary_path = work / "output" / "summary.json"
    if code != 0 or not summary_path.exists():
        emit(
            {
                "kind": "ours-error",
                **tag,
                "stage": "train",
                "code": code,
                "reason": reason(work),
                "log_tail": log_tail(work / "train.log"),
            }
        )
        return
    rec = measure(json.loads(summary_path.read_text()), a.warmup, tag)
    rec["seq"] = a.seq
    emit(rec)
    if a.keep_log and os.environ.get("OUT"):
        shutil.copy(work / "train.log", Path(os.environ["OUT"]) / f"{work.name}.log")
    shutil.rmtree(work, ignore_errors=True)  # full fine-tunes write GBs: keep the disk free


def reason(work: Path) -> str:
    log = work / "termination-log"
    return log.read_text() if log.exists() else ""


def measure(summary: dict[str, Any], warmup: int, tag: dict[str, Any]) -> dict[str, Any]:
    timing = summary.get("timing", {})
    times, tokens = timing.get("step_end_times", []), timing.get("tokens_seen", [])
    rates = [
        (k2 - k1) / (t2 - t1)
        for t1, t2, k1, k2 in zip(
            times[warmup:], times[warmup + 1 :], tokens[warmup:], tokens[warmup + 1 :], strict=False
        )
        if t2 > t1
    ]
    tps = statistics.median(rates) if rates else None
    peak = float(os.environ.get("BENCH_PEAK_TFLOPS", "0") or 0)
    n = summary.get("parameters") or tag.get("plan", {}).get("parameters") or 0
    plan = summary.get("plan", {})
    return {
        "kind": "run",
        **tag,
        "mb": plan.get("micro_batch_size"),
        "seq": 2048,
        "backend": summary.get("backend"),
        "tokens_per_second": round(tps) if tps else None,
        "steps_measured": len(rates),
        "first_step_seconds": timing.get("process_start_to_first_step_seconds"),
        "peak_allocated_gib": round(timing.get("peak_allocated_mib", 0) / 1024, 2),
        "peak_reserved_gib": round(timing.get("peak_reserved_mib", 0) / 1024, 2),
        "load_peak_reserved_gib": round((timing.get("load_peak_reserved_mib") or 0) / 1024, 2),
        "peak_reserved_gib_per_gpu": [
            round(m / 1024, 2) for m in timing.get("peak_reserved_mib_per_gpu", [])
        ],
        "mfu": round(6 * n * tps / (peak * 1e12), 3) if (peak and tps and n) else None,
        "losses": [round(x["loss"], 4) for x in summary.get("losses", [])],
    }


def resume_test(
    a: argparse.Namespace, cfg: Path, env: dict[str, str], work: Path, tag: dict[str, Any]
) -> None:
    progress = work / "progress.json"
    started = time.time()
    proc = trainer("train", cfg, env)
    deadline = time.time() + 300
    step = 0
    first_step: float | None = None  # cold: nothing compiled yet on this work volume
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(json.loads(progress.read_text())["progress.json"])["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 1 and first_step is None:
            first_step = round(time.time() - started, 1)
        if step >= 10:
            break
        time.sleep(0.2)
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    pause_seconds = round(time.time() - t, 1)
    ckpts = sorted(work.glob("checkpoints/checkpoint-*/COMPLETE"))
    t = time.time()
    code2 = trainer("train", cfg, env).wait()
    summary = json.loads((work / "output" / "summary.json").read_text())
    timing = summary.get("timing", {})
    emit(
        {
            "kind": "resume",
            **tag,
            "sigterm_at_step": step,
            "exit_code": code,
            "pause_seconds": pause_seconds,
            "checkpoint": ckpts[-1].parent.name if ckpts else None,
            "resumed_from": summary.get("resumed_from"),
            "final_exit": code2,
            "restart_to_first_step_seconds": timing.get("process_start_to_first_step_seconds"),
            # progress is written every few seconds: an upper bound, within the report interval
            "cold_start_to_first_step_seconds_at_most": first_step,
            "compile_cache_kept": (work / ".cache" / "torch-compile").is_dir(),
            "steps": summary.get("steps"),
            "losses_after_resume": [round(x["loss"], 4) for x in summary.get("losses", [])][:5],
            "wall_seconds": round(time.time() - t, 1),
        }
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Stand-in trainer for the operator's integration tests: speaks docs/contract.md in seconds.

`finetune-trainer prepare|train --config FILE`. Reports to the progress ConfigMap with the pod's
ServiceAccount token (same JSON as the real trainer), advances one step every
STANDIN_STEP_SECONDS, checkpoints every checkpoint.every_steps and on SIGTERM (then exits 10),
resumes from the newest checkpoint with a COMPLETE marker. Told to fail through env:
STANDIN_FAIL_AT_STEP + STANDIN_FAIL_EXIT (+ STANDIN_FAIL_ATTEMPTS: only attempts <= N fail),
STANDIN_BAD_ROW (prepare reports BadData at that row), STANDIN_TOTAL_STEPS; STANDIN_STOP_SECONDS
makes the checkpoint on SIGTERM take that long.
"""

import contextlib
import json
import os
import signal
import ssl
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")
STOP = False


def env_int(name, default=None):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(cfg, key, value):
    """Merge one key into the progress ConfigMap; a failed report never stops training."""
    prog = cfg["progress"]
    ns = prog.get("namespace") or cfg["job"]["namespace"]
    base = prog.get("api_server") or "https://{}:{}".format(
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    )
    req = urllib.request.Request(
        f"{base}/api/v1/namespaces/{ns}/configmaps/{prog['config_map']}",
        method="PATCH",
        data=json.dumps({"data": {key: json.dumps(value)}}).encode(),
        headers={
            "Content-Type": "application/merge-patch+json",
            "Authorization": "Bearer " + (SA / "token").read_text().strip(),
        },
    )
    try:
        urllib.request.urlopen(
            req, context=ssl.create_default_context(cafile=str(SA / "ca.crt")), timeout=10
        ).read()
    except Exception as exc:
        print(f"progress report failed: {exc}", file=sys.stderr, flush=True)


def die(code, message):
    print(message, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        Path("/dev/termination-log").write_text(message)
    sys.exit(code)


def total_steps(cfg):
    return cfg["training"].get("max_steps") or env_int("STANDIN_TOTAL_STEPS", 20)


def prepare(cfg):
    work = Path(cfg["paths"]["work"])
    bad_row = env_int("STANDIN_BAD_ROW")
    if bad_row is not None:
        msg = f"train.jsonl row {bad_row}: field 'output' is missing"
        report(cfg, "prepare.json", {"ok": False, "error": {"reason": "BadData", "message": msg}})
        die(3, msg)
    t = cfg["training"]
    micro = t.get("micro_batch_size") or 4
    result = {
        "ok": True,
        "data": {"records": 200, "tokens": 51200, "truncated": 0},
        "plan": {
            "strategy": "single",
            "micro_batch_size": micro,
            "gradient_accumulation": max(1, t["batch_size"] // micro),
            "estimated_gpu_memory_mib": 1024,
            "gpu_memory_mib": cfg.get("gpu_memory_mib"),
            "parameters": 1000000,
            "fits": True,
            "message": "stand-in plan",
        },
        "total_steps": total_steps(cfg),
        "dataset_hash": "standin",
        "error": None,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "prepare-result.json").write_text(json.dumps(result))
    report(cfg, "prepare.json", result)
    return 0


def stop(*_):
    global STOP
    STOP = True


def newest_checkpoint(ckdir):
    steps = [
        int(p.name.split("-")[1]) for p in ckdir.glob("checkpoint-*") if (p / "COMPLETE").exists()
    ]
    return max(steps, default=0)


def train(cfg):
    signal.signal(signal.SIGTERM, stop)
    work, attempt, total = Path(cfg["paths"]["work"]), cfg["job"]["attempt"], total_steps(cfg)
    ckdir = work / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    every = cfg["checkpoint"]["every_steps"]
    pace = float(os.environ.get("STANDIN_STEP_SECONDS", "0.2"))
    fail_at, fail_exit = env_int("STANDIN_FAIL_AT_STEP"), env_int("STANDIN_FAIL_EXIT", 1)
    fail_attempts = env_int("STANDIN_FAIL_ATTEMPTS", 10**6)
    step = newest_checkpoint(ckdir)
    ckpt = None
    print(f"attempt {attempt}: resuming from step {step} of {total}", flush=True)

    def save(s):
        d = ckdir / f"checkpoint-{s}"
        d.mkdir(exist_ok=True)
        (d / "COMPLETE").write_text(now())
        return {"step": s, "path": f"checkpoints/checkpoint-{s}", "time": now()}

    def progress(state):
        report(
            cfg,
            "progress.json",
            {
                "attempt": attempt,
                "state": state,
                "step": step,
                "total_steps": total,
                "epoch": step / total,
                "loss": 2.0 / (1 + step),
                "learning_rate": 2e-4,
                "tokens_per_second": 1000.0,
                "eta_seconds": int((total - step) * pace),
                "gpu_memory_mib": 0,
                "checkpoint": ckpt,
                "time": now(),
            },
        )

    last = 0.0
    while step < total:
        if STOP:
            time.sleep(float(os.environ.get("STANDIN_STOP_SECONDS", "0")))  # a slow checkpoint
            ckpt = save(step)
            progress("suspended")
            die(10, f"stopped on SIGTERM at step {step}; checkpoint complete")
        time.sleep(pace)
        step += 1
        if step == fail_at and attempt <= fail_attempts:
            progress("failed")
            die(fail_exit, f"stand-in told to fail with exit code {fail_exit} at step {step}")
        if step % every == 0:
            ckpt = save(step)
        if time.monotonic() - last >= cfg["progress"]["interval_seconds"] or step % every == 0:
            progress("running")
            last = time.monotonic()
    out = work / "output"
    out.mkdir(exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"steps": step, "attempt": attempt}))
    progress("completed")
    return 0


def main(argv):
    if len(argv) != 3 or argv[0] not in ("prepare", "train") or argv[1] != "--config":
        die(2, "usage: finetune-trainer prepare|train --config FILE")
    cfg = json.loads(Path(argv[2]).read_text())
    return prepare(cfg) if argv[0] == "prepare" else train(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

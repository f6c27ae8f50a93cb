"""Training end to end on CPU (subprocesses running the real CLI): learning, exact resume, DDP."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import main as cli
from finetune_trainer import podlog
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import (
    base_config,
    progress_reports,
    run_trainer,
    start_trainer,
    write_config,
)

pytestmark = pytest.mark.slow

# a logging record as main.py formats it
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")


def prepare_in_process(config: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("FTO_PROGRESS_FILE", str(work / "progress.local.json"))
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(work / "no-sa"))
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(work / "termination-log"))
    assert cli.main(["prepare", "--config", str(config)]) == 0
    result: dict[str, Any] = json.loads((work / "prepare-result.json").read_text())
    return result


def summary(work: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((work / "output" / "summary.json").read_text())
    return loaded


def adapter_tensors(work: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(work / "output" / "adapter" / "adapter_model.safetensors")))


def test_tiny_llama_learns_the_task_and_the_adapter_loads(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.tiny import exact_match_accuracy

    work = tmp_path / "work"
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(320, seed=0))
    heldout = synthetic_records(64, seed=99)  # filler combinations unseen in training
    cfg = write_config(
        tmp_path / "config.json",
        base_config(
            work,
            tiny_model,
            data,
            lora={"r": 16, "alpha": 32, "dropout": 0.0},
            dataset={"validation_split": 0.1},
            evaluation={"prompts": [heldout[0]["instruction"], "x" * 600], "max_new_tokens": 6},
            training={"epochs": 8, "learning_rate": 0.02, "batch_size": 16, "warmup_steps": 2},
        ),
    )
    prepared = prepare_in_process(cfg, work, monkeypatch)
    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]

    s = summary(work)
    assert s["steps"] == s["total_steps"] == prepared["total_steps"]  # the prepare stage was exact
    losses = [x["loss"] for x in s["losses"]]
    assert len(losses) == s["steps"]
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < 0.25 * first, (first, last)  # the loss falls by more than 75 %
    assert s["eval_loss"] is not None and s["eval_loss"] < 0.5 * first
    assert s["plan"]["source"] == "prepare"
    reports = progress_reports(work)
    assert reports["progress.json"]["state"] == "completed"
    assert reports["progress.json"]["step"] == s["steps"]
    # what status.output is made of: the final report, the latest pointer, the samples file
    final = reports["progress.json"]
    assert final["eval_loss"] == s["eval_loss"]  # the final evaluation is the last one reported
    assert s["eval_losses"][-1] == {"step": s["steps"], "eval_loss": s["eval_loss"]}
    assert final["output"]["written"] == ["adapter", "samples.jsonl", "summary.json"]
    assert final["output"]["summary"]["eval_loss"] == s["eval_loss"]
    assert final["output"]["summary"]["train_loss"] == s["final_loss"]
    assert (work / "latest").is_symlink() and (work / "latest").resolve() == work / "output"
    full = [json.loads(x) for x in (work / "output" / "samples.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in full] == [heldout[0]["instruction"], "x" * 600]
    assert [x["prompt"] for x in final["output"]["samples"]] == [full[0]["prompt"], "x" * 200]

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(work / "output" / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = exact_match_accuracy(base, tok, heldout)
    model = PeftModel.from_pretrained(base, str(work / "output" / "adapter"))
    after = exact_match_accuracy(model, tok, heldout)
    assert before <= 0.1 and after >= 0.4, (before, after)
    # the recorded generation is what the saved adapter generates greedily from the same prompt
    from finetune_trainer import samples as gen

    ids = tok(gen.render(full[0]["prompt"], "alpaca", tok), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert (
        tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
        == (full[0]["completion"])
    )


def wait_for_step(work: Path, step: int, proc: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = progress_reports(work).get("progress.json", {})
        if progress.get("step", 0) >= step:
            return
        assert proc.poll() is None, (work / "train.log").read_text()[-3000:]
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


def resume_config(tmp_path: Path, work: Path, model: Path, data: Path, **extra: Any) -> Path:
    return write_config(
        tmp_path / f"{work.name}.json",
        base_config(
            work,
            model,
            data,
            lora={"r": 8, "alpha": 16, "dropout": 0.1},  # dropout: the RNG state must resume too
            training={"max_steps": 40, "batch_size": 4, "learning_rate": 0.01},
            checkpoint={"every_steps": 10, "keep": 2},
            dataset={"validation_split": 0.1},  # periodic eval (every 5 steps) must not perturb
            evaluation={"every_steps": 5},
            **extra,
        ),
    )


def test_sigterm_checkpoint_resume_is_bit_identical(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(160, seed=3))
    straight = tmp_path / "straight"
    assert run_trainer("train", resume_config(tmp_path, straight, tiny_model, data), straight) == 0

    work = tmp_path / "interrupted"
    cfg = resume_config(tmp_path, work, tiny_model, data)
    proc = start_trainer("train", cfg, work)
    wait_for_step(work, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 10, (work / "train.log").read_text()[-3000:]
    stopped = progress_reports(work)["progress.json"]
    assert stopped["state"] == "suspended" and 3 <= stopped["step"] < 40
    ckpt = work / "checkpoints" / f"checkpoint-{stopped['step']}"
    assert (ckpt / "COMPLETE").is_file()
    assert stopped["checkpoint"]["path"] == f"checkpoints/{ckpt.name}"
    # a newer checkpoint without its marker (a save cut short) must be ignored
    fake = work / "checkpoints" / "checkpoint-39"
    fake.mkdir()
    (fake / "trainer_state.json").write_text("{broken")

    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]
    a, b = summary(straight), summary(work)
    assert b["resumed_from"] == ckpt.name and not fake.exists()
    assert [x["step"] for x in b["losses"]] == list(range(1, 41))
    assert b["losses"] == a["losses"]  # per-step losses: exactly equal
    assert b["learning_rates"] == a["learning_rates"] and b["edits"] == []  # nothing was edited
    assert [e["step"] for e in b["eval_losses"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert b["eval_losses"] == a["eval_losses"]
    ta, tb = adapter_tensors(straight), adapter_tensors(work)
    import torch

    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # bit-identical
    kept = {p.name for p in (work / "checkpoints").iterdir() if p.name.startswith("check")}
    # keep: 2, plus the checkpoint evaluated lowest (status names it) of all that were complete
    evals = {e["step"]: e["eval_loss"] for e in b["eval_losses"]}
    saved = [s for s in (stopped["step"], 10, 20, 30, 40) if s in evals]
    best = min(saved, key=lambda s: (evals[s], s))
    assert kept == {f"checkpoint-{s}" for s in (30, 40, best)}
    final = progress_reports(work)["progress.json"]["output"]["summary"]
    assert final["best_checkpoint_step"] == best


def test_two_processes_ddp_gloo_train_checkpoint_and_suspend(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(96, seed=4))
    work = tmp_path / "ddp"
    cfg = write_config(
        tmp_path / "ddp.json",
        base_config(
            work,
            tiny_model,
            data,
            gpus=2,
            training={"epochs": 2, "batch_size": 8, "learning_rate": 0.01},
            checkpoint={"every_steps": 3, "keep": 5},
        ),
    )
    prepared = prepare_in_process(cfg, work, monkeypatch)
    plan = prepared["plan"]
    assert (plan["strategy"], plan["processes"], plan["micro_batch_size"]) == ("ddp", 2, 4)

    monkeypatch.setenv(podlog.POD_ENV, "ddp-1")  # the downward API's pod name
    proc = start_trainer("train", cfg, work)
    wait_for_step(work, 2, proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to both ranks
    assert proc.wait(timeout=120) == 10, (work / "train.log").read_text()[-3000:]
    step = progress_reports(work)["progress.json"]["step"]
    ckpt = work / "checkpoints" / f"checkpoint-{step}"
    assert (ckpt / "COMPLETE").is_file()
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()

    assert run_trainer("train", cfg, work) == 0, (work / "train.log").read_text()[-3000:]
    s = summary(work)
    assert s["plan"]["processes"] == 2 and s["resumed_from"] == ckpt.name
    assert s["steps"] == s["total_steps"] == prepared["total_steps"]
    assert (work / "output" / "adapter" / "adapter_model.safetensors").is_file()
    for c in (work / "checkpoints").glob("checkpoint-*"):
        assert (c / "COMPLETE").is_file()
    # the pod's log file on the volume (podlog.py): the launcher relayed both ranks' lines into
    # it, whole; every logging record the pod's stderr shows is there, in the same order
    pod_log = (work / "logs" / "ddp-1.log").read_text().splitlines()
    stderr = (work / "train.log").read_text().splitlines()
    records = [line for line in stderr if RECORD.match(line)]
    assert [line for line in pod_log if RECORD.match(line)] == records
    assert set(pod_log) <= set(stderr)  # nothing the pod's own log lacks, no half lines
    assert any("launched ranks 0..1 of 2" in line for line in records)
    assert sum("backend transformers" in line for line in records) >= 2  # both attempts


def test_allocator_defaults_leave_a_pods_own_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer import train

    for key in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"):
        monkeypatch.delenv(key, raising=False)
    train.allocator_defaults()
    assert os.environ["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    train.allocator_defaults()
    assert "PYTORCH_ALLOC_CONF" not in os.environ

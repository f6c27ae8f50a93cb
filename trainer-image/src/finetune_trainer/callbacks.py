"""Small TrainerCallbacks: SIGTERM -> checkpoint -> stop, checkpoint markers, progress, losses."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune_trainer import checkpoints, divergence, edits, stop
from finetune_trainer.progress import Reporter, now_iso

log = logging.getLogger(__name__)


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class SignalCallback(TrainerCallback):
    """On SIGTERM/SIGINT (caught by stop.py since the process started): finish the current
    optimizer step, save a checkpoint, stop; a signal during a checkpoint save stops right after
    that save (no second one).

    Until training begins (model and checkpoint loaded) stop.py ends the process at once; from
    ``on_train_begin`` a signal only sets the flag read here, including one that arrived earlier
    inside a critical block. Every rank agrees on the stop through an all-reduce (ranks receive
    the signal at slightly different moments; stopping on different steps would deadlock the next
    collective).
    """

    def __init__(self, device: str) -> None:
        self.stopped = False
        self.device = device

    def _agreed(self) -> bool:
        dist = _dist()
        if dist is None:
            return stop.requested()
        import torch

        flag = torch.tensor([1 if stop.requested() else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        stop.begin_training()
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._agreed():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # a periodic save that was in flight when the signal came is the checkpoint to stop at
        if not self.stopped and self._agreed():
            log.info(
                "signal during the checkpoint of step %d: stopping after it", state.global_step
            )
            self.stopped = True
            control.should_training_stop = True
        return control


class MarkerCallback(TrainerCallback):
    """After HF has written a checkpoint on every rank: marker (rank 0), retention, report."""

    def __init__(
        self,
        root: Path,
        keep: int,
        reporter: Reporter | None,
        progress: ProgressCallback,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.hparams = hparams  # recorded in each checkpoint (edits.py compares on resume)
        self.keep = keep
        self.reporter = reporter
        self.progress = progress
        self.last: dict[str, Any] | None = None
        self.save_seconds: float | None = None
        self._step_end = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._step_end = time.monotonic()  # HF saves right after on_step_end
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        dist = _dist()
        if dist is not None:
            dist.barrier()  # every rank's files (RNG state per rank) are on disk
        path = self.root / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero:
            info = {"step": state.global_step, "time": now_iso(), "world_size": args.world_size}
            if self.hparams is not None:
                edits.write_snapshot(path, self.hparams)
            checkpoints.write_marker(path, info)  # fsyncs every file first
            self.save_seconds = round(time.monotonic() - self._step_end, 3)
            size = checkpoints.size_of(path)
            # the best evaluated checkpoint stays too: status names it (HF evaluates before saving)
            checkpoints.rotate(self.root, self.keep, checkpoints.eval_losses(state.log_history))
            self.last = {
                "step": state.global_step,
                "path": f"checkpoints/{path.name}",
                "time": info["time"],
            }
            log.info(
                "checkpoint %s complete: %d bytes written and synced in %.2f s",
                path,
                size,
                self.save_seconds,
            )
            self.progress.checkpoint = self.last
            self.progress.extra["checkpoint_save_seconds"] = self.save_seconds
            self.progress.extra["checkpoint_bytes"] = size
            self.progress.send(state, "checkpointing", force=True)
        if dist is not None:
            dist.barrier()
        return control


class ProgressCallback(TrainerCallback):
    """Step, loss, learning rate, tokens/s, ETA and GPU memory to the progress object (rank 0)."""

    def __init__(self, reporter: Reporter | None, attempt: int, cuda: bool) -> None:
        self.reporter = reporter
        self.attempt = attempt
        self.cuda = cuda
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.learning_rate: float | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.packing: str | None = None  # "isolated" or "off: <why>" (train.decide_packing)
        self.edits: list[str] = []  # spec edits applied on resume (edits.honouring_edits)
        self.extra: dict[str, Any] = {}  # resume details, save time: sent with every report
        self._t0: float | None = None
        self._step0 = 0
        self._tokens0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._t0 = time.monotonic()
        self._step0 = state.global_step
        self._tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        logs = logs or {}
        if "loss" in logs:
            self.loss = float(logs["loss"])
        if "learning_rate" in logs:
            self.learning_rate = float(logs["learning_rate"])
        return control

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any
    ) -> Any:
        loss = (metrics or {}).get("eval_loss")
        if isinstance(loss, int | float):
            self.eval_loss = float(loss)
            self.send(state, "running", force=True)  # a new eval loss is news: not throttled
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # the loss of this step is logged right after on_step_end; report it on the next one
        self.send(state, "running")
        return control

    def snapshot(self, state: Any, status: str) -> dict[str, Any]:
        elapsed = time.monotonic() - (self._t0 or time.monotonic())
        steps = state.global_step - self._step0
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self._tokens0
        eta = None
        if steps > 0 and state.max_steps:
            eta = round(elapsed / steps * max(state.max_steps - state.global_step, 0))
        memory = None
        if self.cuda:
            import torch

            memory = int(torch.cuda.max_memory_reserved() // (1024 * 1024))
        return {
            "attempt": self.attempt,
            "state": status,
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": round(float(state.epoch or 0.0), 4),
            "loss": self.loss,
            "eval_loss": self.eval_loss,
            "learning_rate": self.learning_rate,
            "tokens_per_second": round(tokens / elapsed, 1) if elapsed > 0 and tokens else None,
            "eta_seconds": eta,
            "gpu_memory_mib": memory,
            "checkpoint": self.checkpoint,
            "packing": self.packing,
            "edits": list(self.edits) or None,
            "output": None,  # the final report's (results.report), in extra
            **self.extra,
        }

    def send(self, state: Any, status: str, *, force: bool = False) -> None:
        if self.reporter is None or not state.is_world_process_zero:
            return
        self.reporter.progress(self.snapshot(state, status), force=force)


def process_start_epoch() -> float:
    """When this process was started (from /proc), so start-up includes interpreter + imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        import os

        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class DivergenceCallback(TrainerCallback):
    """Ends the run with DivergedError (exit 8) when a logged loss is NaN or infinite (every rank
    sees the same all-reduced loss, so every rank stops); ``progress`` supplies the learning rate
    and the newest complete checkpoint for the message."""

    def __init__(self, progress: ProgressCallback) -> None:
        self.progress = progress

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        checkpoint = (self.progress.checkpoint or {}).get("path")
        divergence.check(logs or {}, state.global_step, self.progress.learning_rate, checkpoint)
        return control


class TimingCallback(TrainerCallback):
    """Per-step wall time and tokens seen, for the summary (benchmarks read it from there)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.started = process_start_epoch()
        self.first_step_seconds: float | None = None
        self.step_times: list[float] = []
        self.tokens_seen: list[int] = []
        self.load_peak_reserved_mib: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # loading (quantisation of bf16 shards) peaks differently from training: keep both
        if self.cuda:
            import torch

            self.load_peak_reserved_mib = max(_per_device_mib(torch.cuda.max_memory_reserved))
            for device in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(device)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        now = time.time()
        if self.first_step_seconds is None:
            self.first_step_seconds = round(now - self.started, 2)
        self.step_times.append(round(now, 4))
        self.tokens_seen.append(int(getattr(state, "num_input_tokens_seen", 0) or 0))
        return control

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "process_start_to_first_step_seconds": self.first_step_seconds,
            "step_end_times": self.step_times,
            "tokens_seen": self.tokens_seen,
        }
        if self.cuda:
            import torch

            # a model split over GPUs peaks on each of them: report the largest and every one
            reserved = _per_device_mib(torch.cuda.max_memory_reserved)
            out["load_peak_reserved_mib"] = self.load_peak_reserved_mib
            out["peak_allocated_mib"] = max(_per_device_mib(torch.cuda.max_memory_allocated))
            out["peak_reserved_mib"] = max(reserved)
            out["peak_reserved_mib_per_gpu"] = reserved
        return out


def _per_device_mib(measure: Any) -> list[int]:
    """``measure(device)`` in MiB for every GPU this process sees (DDP ranks see theirs only)."""
    import torch

    return [int(measure(d) // 2**20) for d in range(max(torch.cuda.device_count(), 1))]

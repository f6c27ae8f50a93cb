"""Training: TRL's SFT trainer over the prepared dataset, with checkpoints that resume exactly.

``main`` resolves the plan (prepare stage's result, or the planner run here), launches one process
per GPU when the plan says ddp, and in each process: loads the model through backends.py, opens the
prepared (already tokenized) dataset — building it here only if the prepare stage did not — packs
it when asked, and runs ``SFTTrainer`` with checkpoints under ``<work>/checkpoints``. On start it
resumes from the newest COMPLETE checkpoint (HF Trainer restores step, optimizer, scheduler, RNG
and skips the batches already seen). SIGTERM before training exits 10 at once, during training
ends with a checkpoint and exit 10 (stop.py); CUDA OOM exits 11, a full volume 6 (DiskFull). The
final output is staged and renamed into place (files.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import (
    agree,
    backends,
    chat_templates,
    checkpoints,
    diskfull,
    edits,
    files,
    hubcache,
    isolation,
    launch,
    planner,
    prepare,
    rendezvous,
    results,
    retention,
    samples,
    stop,
    tracking,
    workdir,
)
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import (
    EXIT_SUSPENDED,
    ConfigError,
    CudaOOMError,
    PlanRefusedError,
    write_termination_log,
)

log = logging.getLogger(__name__)

# the launcher tells its ranks which damaged checkpoints it set aside (reported by rank 0)
SKIPPED_ENV = "FTO_SKIPPED_CHECKPOINTS"


@dataclass(frozen=True)
class RunPlan:
    strategy: str
    processes: int
    micro_batch_size: int
    gradient_accumulation: int
    total_steps: int | None
    source: str  # "prepare" or "planner"


def resolve_plan(config: TrainerConfig) -> RunPlan:
    """The prepare stage's plan when it matches this config, else the planner run now.

    Explicit micro_batch_size / gradient_accumulation in the config (e.g. edited while suspended,
    or the operator's OOM retry) win over the planner's choice.
    """
    t = config.training
    result = prepare.read_result(config)
    if result and result.get("ok") and result.get("plan"):
        p = result["plan"]
        source = "prepare"
        strategy, processes = str(p["strategy"]), int(p["processes"])
        micro, accum = int(p["micro_batch_size"]), int(p["gradient_accumulation"])
    else:
        plan = prepare.make_plan(config, prepare.load_model_config(config))
        if not plan.fits:
            raise PlanRefusedError(plan.message)
        source = "planner"
        strategy, processes = plan.strategy, plan.processes
        micro, accum = plan.micro_batch_size, plan.gradient_accumulation
    if config.gpus > 1 and strategy == "single":
        strategy, processes = "ddp", config.gpus
    world = processes * config.nodes  # processes is per node
    if t.micro_batch_size is not None:
        micro = t.micro_batch_size
        accum = t.gradient_accumulation or max(t.batch_size // (micro * world), 1)
    elif t.gradient_accumulation is not None:
        accum = t.gradient_accumulation
        micro = max(t.batch_size // (accum * world), 1)
    if micro * accum * world != t.batch_size:
        nodes = f" x {config.nodes} nodes" if config.nodes > 1 else ""
        raise PlanRefusedError(
            f"microBatchSize {micro} x gradientAccumulation {accum} x {processes} processes"
            f"{nodes} != batchSize {t.batch_size}"
        )
    return RunPlan(strategy, processes, micro, accum, None, source)


def allocator_defaults() -> None:
    """Expandable segments for torch's CUDA caching allocator, unless the pod set its own config.

    The allocator reads its config once, when CUDA initialises, and the device check does that
    before Unsloth's import would set the same (measured on H100: 0.5 GiB of slack between
    reserved and allocated without it, 0.1-0.2 GiB with it)."""
    if not any(
        k in os.environ
        for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")
    ):
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"


def main(config: TrainerConfig, config_path: str) -> int:
    """Entry of ``finetune-trainer train``; returns the exit code."""
    allocator_defaults()
    os.environ.setdefault("HF_HUB_CACHE", hubcache.for_model(config))
    stop.stage("start-up")
    plan = resolve_plan(config)
    if launch.is_child():
        return run(config, plan)
    topo = rendezvous.topology(os.environ, plan.processes, launch.free_port)
    if topo.nnodes != config.nodes:
        raise ConfigError(
            f"PET_NNODES {topo.nnodes} differs from the config's {config.nodes} nodes"
        )
    if topo.node_rank == 0:  # one node owns the shared work directory's start-up
        with stop.critical("claiming the work directory"):
            workdir.claim(config.work, config.job.uid)  # before any rank looks for checkpoints
            resume = retention.at_start(config.work, config.checkpoint.keep)
        os.environ[SKIPPED_ENV] = json.dumps(resume.skipped)
    if topo.multi_node:
        stop.stage("waiting for the master's name")
        rendezvous.wait_for_name(topo.master_addr, rendezvous.timeout_s(os.environ))
    if topo.world_size > 1:
        import torch

        args = [
            "--log-level",
            logging.getLevelName(logging.getLogger().level),
            "train",
            "--config",
            config_path,
        ]
        code, reason = launch.launch(args, topo, cuda=torch.cuda.is_available())
        stop.ending()  # the ranks decided; a late signal must not turn their result into 10
        if code != 0 and reason:
            write_termination_log(reason)
        return code
    return run(config, plan)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _load_splits(config: TrainerConfig, tokenizer_for_hash: Any) -> tuple[Any, prepare.Prepared]:
    """The prepared (tokenized) splits; rank 0 builds or finds them first."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if distributed and _rank() != 0:
        dist.barrier()  # rank 0 builds (or finds) the prepared dataset first
    prepared = prepare.build_dataset(config, tokenizer_for_hash)
    if distributed and _rank() == 0:
        dist.barrier()
    if not prepared.reused:
        log.info("the prepare stage had not run: tokenized here (%s)", prepared.path)
    return prepare.load_prepared(prepared.path), prepared


def _shape_datasets(splits: Any, max_len: int, pack: bool) -> tuple[Any, Any]:
    """Train (and validation) datasets with labels, packed when ``pack``."""
    from finetune_trainer import packing

    train = packing.pack(splits["train"], max_len) if pack else packing.unpacked(splits["train"])
    evaluation = None
    if "validation" in splits:
        evaluation = packing.unpacked(splits["validation"])
    return train, evaluation


def decide_packing(
    config: TrainerConfig, loaded: backends.Loaded
) -> tuple[bool, Any, isolation.Verdict]:
    """(pack, collator, verdict): packing stays on only where the loaded model provably isolates
    samples (isolation.check); otherwise rows are padded and the reason is logged and reported."""
    from finetune_trainer import packing

    pad_id = loaded.tokenizer.pad_token_id
    pad_id = int(pad_id) if pad_id is not None else 0
    plain = packing.Collator(pad_token_id=pad_id, isolate=False)
    if not config.training.packing:
        return False, plain, isolation.Verdict(False, "packing is off in the spec")
    if config.model.trust_remote_code:
        why = "remote model code: sample isolation cannot be guaranteed"
        return False, plain, isolation.Verdict(False, why)
    packed = packing.Collator(pad_id, isolate=True, lengths_key=loaded.backend == "unsloth")
    vocab = int(getattr(getattr(loaded.model, "config", None), "vocab_size", 0) or 0)
    vocab = vocab or len(loaded.tokenizer)
    verdict = isolation.check(loaded.model, packed, vocab, seed=config.training.seed)
    if verdict.isolated:
        log.info("packing on, samples isolated (%s backend): %s", loaded.backend, verdict.reason)
        return True, packed, verdict
    log.warning("packing turned off: the %s backend does not isolate samples: %s",
                loaded.backend, verdict.reason)  # fmt: skip
    return False, plain, verdict


def _init_distributed(device: backends.Device) -> None:
    if device.world_size <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.cuda:
            torch.cuda.set_device(device.local_rank)
        stop.stage("the rendezvous")
        rendezvous.init_process_group("nccl" if device.cuda else "gloo")


def run(config: TrainerConfig, plan: RunPlan) -> int:
    """Train in this process (one rank); returns 0 or 10 (suspended)."""
    from finetune_trainer.callbacks import (
        DivergenceCallback,
        MarkerCallback,
        ProgressCallback,
        SignalCallback,
        TimingCallback,
    )
    from finetune_trainer.progress import Reporter, make_sink

    started = time.time()
    stop.stage("loading")  # until on_train_begin a signal ends the process at once (stop.py)
    device = backends.detect_device()
    timing = TimingCallback(device.cuda)
    signals = SignalCallback(f"cuda:{device.local_rank}" if device.cuda else "cpu")
    backend = backends.resolve(config, device)
    backends.early_import(backend)  # unsloth must patch transformers/TRL before they load
    _init_distributed(device)
    if backends.cap_memory(device, config.gpu_memory_mib):
        log.info("GPU memory held to %d MiB per process, as planned", config.gpu_memory_mib)
    is_main = _rank() == 0
    reporter = Reporter(make_sink(config), config.progress.interval_seconds, enabled=is_main)
    token = prepare.hub_token(config)

    work = config.work
    ckpt_root = work / "checkpoints"
    if is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_incomplete(ckpt_root)
    resume = checkpoints.newest_complete(ckpt_root)  # verified by retention.at_start
    tokenizer_for_hash = prepare.load_tokenizer(config)
    splits, prepared = _load_splits(config, tokenizer_for_hash)

    loaded = backends.load(config, backend, device, token, plan.strategy)
    template = chat_templates.install(loaded.tokenizer, config.dataset)  # saved with the output
    pack, collator, packing_verdict = decide_packing(config, loaded)
    train_ds, eval_ds = _shape_datasets(splits, config.training.max_seq_length, pack)
    log.info(
        "backend %s, dtype %s, method %s, micro-batch %d x accumulation %d x %d processes",
        loaded.backend,
        loaded.dtype,
        config.method,
        plan.micro_batch_size,
        plan.gradient_accumulation,
        device.world_size,
    )

    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    if getattr(loaded.model, "config", None) is not None:
        loaded.model.config.use_cache = False  # training never needs the KV cache

    t = config.training
    reports = tracking.setup(config)
    args = SFTConfig(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=plan.micro_batch_size,
        per_device_eval_batch_size=plan.micro_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps else t.warmup_ratio,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        bf16=loaded.dtype == "bf16",
        fp16=loaded.dtype == "fp16",
        use_cpu=not device.cuda,
        ddp_backend=None if device.world_size <= 1 else ("nccl" if device.cuda else "gloo"),
        gradient_checkpointing=t.gradient_checkpointing and loaded.backend == "transformers",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        # the default filter logs a NaN/inf step as the running mean: divergence.check must see it
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=config.checkpoint.every_steps,
        save_total_limit=None,  # retention counts complete checkpoints only (MarkerCallback)
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=config.evaluation.every_steps or config.checkpoint.every_steps,
        report_to=reports,
        run_name=config.job.name,
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        max_length=None,  # rows are truncated/packed to max_seq_length already
        # rows are packed already (packing.py) and packing.Collator flattens them with their
        # boundaries; TRL's own packing / padding-free (which Unsloth rewrites) stay off
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    progress = ProgressCallback(reporter if is_main else None, config.job.attempt, device.cuda)
    progress.packing = packing_text(config, pack, packing_verdict)
    hparams = edits.snapshot(config, plan.micro_batch_size, plan.gradient_accumulation)
    marker = MarkerCallback(ckpt_root, config.checkpoint.keep, reporter, progress, hparams)
    trainer_class = SFTTrainer if device.cuda else cpu_trainer_class(SFTTrainer)
    trainer_class = edits.honouring_edits(trainer_class, hparams, progress.edits)
    trainer = trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=loaded.tokenizer,
        data_collator=collator,
        callbacks=[
            signals,
            progress,
            DivergenceCallback(progress),
            marker,
            timing,
            recorder := tracking.run_recorder(work, reports),
        ],
    )
    skipped = json.loads(os.environ.get(SKIPPED_ENV) or "[]")
    if resume is not None and device.world_size > 1:  # every rank on the same checkpoint
        coll = agree.TorchCollective(f"cuda:{device.local_rank}" if device.cuda else "cpu")
        agreed = agree.agree(ckpt_root, resume, lambda p: probe_load(trainer, p), coll, _rank())
        skipped += agreed.skipped
        if agreed.path is None:
            raise RuntimeError(
                f"no complete checkpoint loads on every rank (set aside: "
                f"{', '.join(s['path'] for s in agreed.skipped)})"
            )
        resume = agreed.path
    progress.extra["resumed_from"] = f"checkpoints/{resume.name}" if resume else None
    if skipped:
        progress.extra["skipped_checkpoints"] = skipped  # damaged, set aside (checkpoints.py)
    while True:
        if resume is not None:
            log.info("resuming from %s", resume)
        stop.stage("reading the checkpoint" if resume else "starting training")
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
                raise CudaOOMError(oom_advice(config, plan)) from exc
            raise_if_disk_full(config, exc, is_main=is_main)
            previous = fallback(exc, resume, ckpt_root, device.world_size)
            if previous is None or resume is None:
                raise
            progress.extra.setdefault("skipped_checkpoints", []).append(
                {
                    "path": f"checkpoints/{resume.name}",
                    "error": f"{type(exc).__name__}: {exc}"[:300],
                }
            )
            progress.extra["resumed_from"] = f"checkpoints/{previous.name}"
            resume = previous
    state = trainer.state
    if signals.stopped and state.global_step < state.max_steps:
        progress.send(state, "suspended", force=True)
        log.info("stopped at step %d on SIGTERM with a complete checkpoint", state.global_step)
        return EXIT_SUSPENDED

    eval_loss = None
    if eval_ds is not None:
        eval_loss = float(trainer.evaluate()["eval_loss"])
    generations = samples.generate(trainer.model, loaded.tokenizer, config) if is_main else []
    out = work / "output"
    name = "model" if config.method == "full" else "adapter"

    def summary() -> dict[str, Any]:
        s = make_summary(
            config,
            plan,
            loaded,
            state,
            started=started,
            resumed_from=resume,
            prepared=prepared,
            eval_loss=eval_loss,
        )
        s["edits"] = progress.edits
        s["samples"] = generations
        s["packing"] = {
            "requested": config.training.packing,
            "on": pack,
            "isolation": packing_verdict.reason,
        }
        s["timing"] = timing.summary()
        s["chat_template"] = template
        s["tracking"] = tracking.summary(config, reports, recorder.run_id)
        return s

    try:
        with stop.critical("the final save"):
            written = save_output(
                config,
                trainer,
                loaded,
                out / name,
                is_main=is_main,
                summary=summary,
                generations=generations,
            )
            if is_main:
                results.try_point_latest(work, out)
    except Exception as exc:
        raise_if_disk_full(config, exc, is_main=is_main)
        raise
    if is_main:
        kept = [s for s, _ in checkpoints.complete(ckpt_root)]
        best = results.best_eval(checkpoints.eval_losses(state.log_history), kept)
        progress.extra["output"] = results.report(
            written, summary(), samples.short(generations), best
        )
        progress.send(state, "completed", force=True)
        retention.after_success(work)
    if stop.requested():
        log.info("a signal came during the final save: the output is complete, exiting 0")
    log.info("done: %d steps, output in %s", state.global_step, out / name)
    return 0


def packing_text(config: TrainerConfig, pack: bool, verdict: isolation.Verdict) -> str | None:
    """What status.progress.packing says: null when packing was not asked for."""
    if not config.training.packing:
        return None
    return "isolated" if pack else f"off: {verdict.reason}"[:200]


def save_output(
    config: TrainerConfig,
    trainer: Any,
    loaded: backends.Loaded,
    target: Path,
    *,
    is_main: bool,
    summary: Callable[[], dict[str, Any]],
    generations: list[dict[str, str]] | None = None,
) -> list[str]:
    """Write the adapter (or model), tokenizer, merged weights, samples and summary into a
    staging directory, then rename it to ``output/`` (files.publish): never a half output.
    Returns the names written (what status.output lists)."""
    out = target.parent
    staging = files.staging_dir(out)
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)  # an earlier attempt cut short
    trainer.save_model(str(staging / target.name))  # every rank calls it; rank 0 writes
    if not is_main:
        return []
    written = [target.name, "summary.json"]
    loaded.tokenizer.save_pretrained(str(staging / target.name))  # with chat_template.jinja
    tracking.copy_into(config, staging)
    if config.output.merge_adapter and config.method != "full":
        backends.save_merged(loaded, trainer.model, staging / "merged")
        written.append("merged")
    if generations:
        samples.write(staging, generations)
        written.append(samples.FILE)
    (staging / "summary.json").write_text(json.dumps(summary(), indent=1))
    files.publish(staging, out)
    return written


def probe_load(trainer: Any, path: Path) -> str | None:
    """What stops this rank from resuming from ``path`` (loaded as HF Trainer will), or None."""
    problem = checkpoints.verify(path)
    if problem is not None:
        return problem
    try:
        trainer._load_from_checkpoint(str(path))  # the weights (and adapter)
        optimizer = path / "optimizer.pt"
        if optimizer.is_file():  # mapped, not read: its structure, not gigabytes of state
            import torch

            state = torch.load(optimizer, map_location="cpu", mmap=True, weights_only=True)
            if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
                return "optimizer.pt holds no optimizer state"
    except Exception as exc:  # any load failure is the checkpoint's, for the agreement
        stop.check()  # unless a signal came during the load (see fallback)
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def fallback(exc: Exception, resume: Path | None, root: Path, world_size: int) -> Path | None:
    """The previous complete checkpoint when loading ``resume`` failed before training began
    (a damage the cheap verification cannot see, e.g. a state dict of the wrong shape); the
    damaged one is set aside as ``.corrupt``. None when there is nothing to fall back to: no
    resume, a stop was asked for (a signal during the load surfaces as the library's error),
    training had begun, several ranks (they agreed before training: ``agree``, and a
    failure after that is not a fallback one rank may take alone), or no older one (the
    model may hold the damaged weights: starting from step 0 on them would be wrong)."""
    if resume is None or stop.requested() or stop.training_started() or world_size > 1:
        # A signal during the load: the handler's Interrupted can come back as a library's own
        # error (torch's unpickler turned one into "ValueError: could not determine the shape of
        # object type 'torch.storage.UntypedStorage'"). That says nothing about the checkpoint:
        # the error is raised and main() ends the run as suspended, the checkpoint untouched.
        return None
    older = [p for s, p in checkpoints.complete(root) if s < (checkpoints.step_of(resume) or 0)]
    if not older:
        return None
    aside = resume.with_name(resume.name + ".corrupt")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(resume, aside)
    log.error(
        "checkpoint %s failed to load (%s: %s): set aside as %s, resuming from %s instead",
        resume.name, type(exc).__name__, str(exc)[:300], aside.name, older[-1].name,
    )  # fmt: skip
    return older[-1]


def raise_if_disk_full(config: TrainerConfig, exc: BaseException, *, is_main: bool) -> None:
    """Re-raise a full volume as DiskFullError (exit 6, not retried); the save it cut short is
    removed (it has no marker and is never used), the last complete checkpoint stays."""
    root = config.work / "checkpoints"
    newest = checkpoints.newest_complete(root)
    needed = checkpoints.size_of(newest) if newest is not None else None
    full = diskfull.as_disk_full(exc, config.work, config.paths.claim, needed)
    if full is None:
        return
    if is_main:
        checkpoints.remove_incomplete(root)
        shutil.rmtree(files.staging_dir(config.work / "output"), ignore_errors=True)
    if newest is not None:
        full.args = (f"{full} ({newest.name} is complete)",)
    raise full from exc


def cpu_trainer_class(base: Any) -> Any:
    """SFTTrainer with the plain transformers loss.

    TRL 1.15 computes the loss with a Triton kernel (chunked log-probs), which needs a GPU; on CPU
    the model's own cross-entropy (``Trainer.compute_loss``, same token-mean over
    ``num_items_in_batch``) is used instead. Only TRL's entropy/accuracy metrics are lost.
    """
    from transformers import Trainer

    class CPUSFTTrainer(base):  # type: ignore[misc]
        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            # no KV cache in training: with a cache transformers would not detect packed rows
            # (position ids restarting at 0) and samples would attend across their boundaries
            inputs["use_cache"] = False
            return Trainer.compute_loss(
                self,
                model,
                inputs,
                return_outputs=return_outputs,
                num_items_in_batch=num_items_in_batch,
            )

        def _load_optimizer_and_scheduler(self, checkpoint: Any) -> Any:
            # With several CPU processes transformers maps the optimizer state to args.device,
            # "cpu:<n>", which torch.load rejects ("don't know how to restore data location");
            # map it to plain "cpu" for the duration of the call.
            import torch

            original = torch.load

            def load(*args: Any, **kwargs: Any) -> Any:
                if str(kwargs.get("map_location", "")).startswith("cpu"):
                    kwargs["map_location"] = "cpu"
                return original(*args, **kwargs)

            torch.load = load
            try:
                return super()._load_optimizer_and_scheduler(checkpoint)
            finally:
                torch.load = original

    return CPUSFTTrainer


def oom_advice(config: TrainerConfig, plan: RunPlan) -> str:
    t = config.training
    tips = []
    if plan.micro_batch_size > 1:
        tips.append(
            f"halve microBatchSize ({plan.micro_batch_size} -> "
            f"{plan.micro_batch_size // 2}; gradientAccumulation doubles)"
        )
    tips.append(f"lower maxSeqLength (now {t.max_seq_length})")
    if config.method != "qlora":
        tips.append("use qlora")
    return (
        f"CUDA out of memory at microBatchSize {plan.micro_batch_size}, maxSeqLength "
        f"{t.max_seq_length}: " + ", or ".join(tips)
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "finetune-trainer",
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "unsloth",
        "bitsandbytes",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def make_summary(
    config: TrainerConfig,
    plan: RunPlan,
    loaded: backends.Loaded,
    state: Any,
    *,
    started: float,
    resumed_from: Path | None,
    prepared: prepare.Prepared,
    eval_loss: float | None,
) -> dict[str, Any]:
    losses = [
        {"step": int(e["step"]), "loss": float(e["loss"])}
        for e in state.log_history
        if "loss" in e and "step" in e
    ]
    train_metrics: dict[str, Any] = next(
        (e for e in reversed(state.log_history) if "train_runtime" in e), {}
    )
    return {
        "job": config.job.name,
        "attempt": config.job.attempt,
        "method": config.method,
        "backend": loaded.backend,
        "dtype": loaded.dtype,
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "epochs": state.epoch,
        "final_loss": losses[-1]["loss"] if losses else None,
        "losses": losses,
        "learning_rates": [
            {"step": int(e["step"]), "learning_rate": float(e["learning_rate"])}
            for e in state.log_history
            if "learning_rate" in e and "step" in e
        ],
        "eval_loss": eval_loss,
        "eval_losses": [
            {"step": k, "eval_loss": v}
            for k, v in sorted(checkpoints.eval_losses(state.log_history).items())
        ],
        "tokens": int(getattr(state, "num_input_tokens_seen", 0) or 0),
        "plan": {
            "strategy": plan.strategy,
            "processes": plan.processes,
            "micro_batch_size": plan.micro_batch_size,
            "gradient_accumulation": plan.gradient_accumulation,
            "source": plan.source,
        },
        "resumed_from": resumed_from.name if resumed_from else None,
        "prepared": str(prepared.path),
        # True when the prepare stage (or an earlier attempt) had tokenized it: not tokenized again
        "prepared_reused": prepared.reused,
        "train_runtime_seconds": train_metrics.get("train_runtime"),
        "wall_seconds": round(time.time() - started, 3),
        "versions": versions(),
    }


__all__ = ["RunPlan", "main", "planner", "resolve_plan", "run"]

"""Command line: ``finetune-trainer {train,prepare,export,read-logs,make-tiny-model,make-dataset}``.

Maps every failure to the exit codes of docs/contract.md and writes a one-line reason to
/dev/termination-log (``FTO_TERMINATION_LOG`` overrides the path), which Kubernetes copies into the
container status. Heavy imports (torch, transformers) happen inside the subcommands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from finetune_trainer import diskfull, launch, podlog, stop
from finetune_trainer.errors import (
    EXIT_ERROR,
    EXIT_OOM,
    EXIT_SUSPENDED,
    TrainerError,
    write_termination_log,
)

log = logging.getLogger("finetune_trainer")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune-trainer", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("FTO_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "train (resuming from the newest complete checkpoint)"),
        ("prepare", "validate + tokenize the data and plan memory (CPU)"),
        ("export", "merged weights, GGUF, OCI push of the trained adapter (CPU)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default="/etc/finetune/config.json", help="config.json path")
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random model + tokenizer")
    tiny.add_argument("out", type=Path)
    tiny.add_argument(
        "--arch", default="llama", choices=["llama", "mistral", "qwen2", "qwen3", "gemma"]
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--vocab-size", type=int, default=512)
    tiny.add_argument(
        "--tokenizer",
        default="bpe",
        choices=["bpe", "sentencepiece"],
        help="sentencepiece: one llama.cpp's GGUF converter accepts",
    )
    logs = sub.add_parser("read-logs", help="print pods' log files of the work volume (plugin)")
    logs.add_argument("--dir", type=Path, required=True, help="<work>/logs/<job uid>")
    logs.add_argument("--max-bytes", type=int, help="at most the last N bytes of each pod's")
    logs.add_argument("pods", nargs="+", help="pod names")
    ds = sub.add_parser("make-dataset", help="write the synthetic alpaca task as jsonl")
    ds.add_argument("out", type=Path)
    ds.add_argument("--records", type=int, default=512)
    ds.add_argument("--seed", type=int, default=0)
    return parser


def _is_cuda_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def _run(args: argparse.Namespace) -> int:
    if args.command == "make-tiny-model":
        from finetune_trainer.tiny import make_tiny_model

        out = make_tiny_model(
            args.out,
            args.arch,
            seed=args.seed,
            vocab_size=args.vocab_size,
            hidden=args.hidden,
            layers=args.layers,
            tokenizer=args.tokenizer,
        )
        log.info("tiny %s model written to %s", args.arch, out)
        return 0
    if args.command == "make-dataset":
        from finetune_trainer.tiny import synthetic_records, write_jsonl

        write_jsonl(args.out, synthetic_records(args.records, seed=args.seed))
        log.info("%d synthetic records written to %s", args.records, args.out)
        return 0

    if args.command == "read-logs":
        for line in podlog.read(args.dir, args.pods, args.max_bytes):
            print(line, flush=True)
        return 0

    from finetune_trainer.config import load_config

    config = load_config(args.config)
    args.work, args.claim = config.work, config.paths.claim
    if not launch.is_child():  # a launcher's ranks: it relays their lines into its file
        podlog.attach(config.work, config.job.uid, os.environ)
    if args.command == "prepare":
        from finetune_trainer import prepare
        from finetune_trainer.progress import Reporter, make_sink

        reporter = Reporter(make_sink(config), config.progress.interval_seconds)
        stop.stage("prepare")
        result = prepare.run(config, reporter)
        log.info("prepare ok: %s; %s steps", result["plan"]["message"], result["total_steps"])
        return 0
    if args.command == "export":
        from finetune_trainer.export import run

        stop.stage("export")
        return run.main(config)
    from finetune_trainer import prefetch, train

    log.info("%s", prefetch.summary())  # after the heavy imports: how far the prefetch got
    return train.main(config, args.config)


def _suspended(message: str) -> int:
    log.info("%s", message)
    write_termination_log(f"Suspended: {message}")
    return EXIT_SUSPENDED


def main(argv: Sequence[str] | None = None) -> int:
    stop.install()  # no-op when the entry module did it already (it does, ~8 s earlier)
    args = make_parser().parse_args(list(argv) if argv is not None else None)
    args.work, args.claim = None, None
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        stop.check()  # a signal whose Interrupted was swallowed during the imports
        return _run(args)
    except (stop.Interrupted, Exception) as exc:
        stop.ending()  # a second signal while the failure is reported must not cut that short
        return _failure(exc, args)
    finally:
        podlog.detach()  # after the failure's own lines


def _failure(exc: BaseException, args: argparse.Namespace) -> int:
    """The exit code (and termination message) for what ended the run."""
    if isinstance(exc, stop.Interrupted):
        return _suspended(f"{exc}; nothing to save yet, exited at once")
    if isinstance(exc, TrainerError):
        message = f"{exc.reason}: {exc}"
        log.error("%s", message)
        if exc.__cause__ is not None:  # e.g. the library error a DiskFull was recognised in
            log.info("caused by %s: %s", type(exc.__cause__).__name__, exc.__cause__)
        write_termination_log(message)
        return exc.exit_code
    full = diskfull.as_disk_full(exc, args.work, args.claim)
    if full is not None:
        message = f"{full.reason}: {full}"
        log.error("%s", message)
        log.info("caused by %s: %s", type(exc).__name__, exc)
        write_termination_log(message)
        return full.exit_code
    if stop.requested() and not stop.training_started():
        # e.g. a peer rank stopped by the same signal closed a collective under this one
        return _suspended(f"signal {stop.signum()} before training ({type(exc).__name__})")
    if _is_cuda_oom(exc):
        message = f"CudaOOM: {exc}".splitlines()[0]
        log.error("%s", message)
        write_termination_log(message)
        return EXIT_OOM
    log.error("failed", exc_info=exc)
    write_termination_log(f"Error: {type(exc).__name__}: {exc}".splitlines()[0])
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""SIGTERM / SIGINT from the first instruction of the process to its last (docs/contract.md §5).

Imported by the process entry (``finetune_trainer.__main__``) before anything else, so the
handlers are in place ~20 ms after exec instead of after the ~8 s of torch/transformers imports
(in a pod the trainer is PID 1, and the kernel drops a signal PID 1 has no handler for: an early
SIGTERM used to be lost and the pod SIGKILLed at the end of its grace period).

Two modes:

* **abort** (start-up: imports, prepare, model and dataset loading, reading a checkpoint): nothing
  is lost by stopping, so the handler raises :class:`Interrupted` at once and the process exits
  with the suspend code 10. Every file written in this mode is written to a temporary name and
  renamed, so an interruption never leaves a half file under a real name; a block that must
  not be cut (``with critical():``) defers the raise to its end.
* **defer** (from the first training step to the end, and in critical blocks): the handler only
  records the request; the training loop finishes the step in flight, writes a complete
  checkpoint and exits 10 (``callbacks.SignalCallback``), a checkpoint or final output being
  written is finished first.

This module imports only the standard library's ``signal``/``os``/``time``: it must stay cheap.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised by the handler in abort mode.

    A ``BaseException`` like ``KeyboardInterrupt``: library code that catches ``Exception`` (for
    optional imports, retries, fallbacks) must not swallow the stop."""

    def __init__(self, signum: int, stage: str) -> None:
        super().__init__(f"signal {signum} during {stage}")
        self.signum = signum
        self.stage = stage


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None  # time.monotonic()
        self.defer = False  # True once training runs: finish the step, checkpoint, stop
        self.training = False
        self.critical = 0  # nesting depth of critical blocks
        self.stage = "imports"
        self.installed = False


_state = _State()


def _note(text: str) -> None:
    # the logging module may not be configured (or imported) yet: write the line directly
    with suppress(OSError):
        os.write(2, f"finetune-trainer: {text}\n".encode())


def _handler(signum: int, _frame: FrameType | None) -> None:
    first = _state.signum is None
    if first:
        _state.signum = signum
        _state.received_at = time.monotonic()
    if _state.defer or _state.critical:
        if first:
            what = "finish the step in flight, checkpoint and stop"
            if _state.critical:
                what = f"finish {_state.stage} first"
            _note(f"signal {signum} during {_state.stage}: will {what}")
        return
    _note(f"signal {signum} during {_state.stage}: stopping now (nothing to save yet)")
    raise Interrupted(signum, _state.stage)


def install(*, hold: bool = False) -> None:
    """Install the handlers (idempotent); call as the first thing the process does.

    The signals are blocked while the handlers go in, so one arriving between the two is not
    lost. With ``hold`` they stay blocked (pending, never lost) until ``release()``, which the
    entry module calls inside its ``try``: a signal in the first statements then ends the
    process as Suspended (exit 10), not with an uncaught Interrupted (exit 1)."""
    if _state.installed:
        if not hold:
            release()
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    for s in SIGNALS:
        signal.signal(s, _handler)
    _state.installed = True
    if not hold:
        release()


def release() -> None:
    """Deliver the signals held since ``install(hold=True)`` (children inherit the mask: call
    before starting any)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def stage(name: str) -> None:
    """Name what the process is doing now (logged; named in the termination message)."""
    import logging  # imported by main long before the first stage; not at module import

    _state.stage = name
    logging.getLogger(__name__).info("stage: %s", name)
    # A raised Interrupted can be swallowed by third-party code between here and the signal (a
    # bare ``except:`` in an import chain was seen once on a loaded CI machine): every stage
    # boundary raises it again, so a start-up signal always ends the run as Suspended.
    check()


def requested() -> bool:
    return _state.signum is not None


def signum() -> int | None:
    return _state.signum


def seconds_since_request() -> float | None:
    if _state.received_at is None:
        return None
    return time.monotonic() - _state.received_at


def training_started() -> bool:
    return _state.training


def ending() -> None:
    """The run is over (failure being reported, or exiting): signals only set the flag."""
    _state.defer = True


def begin_training() -> None:
    """From now on a signal only sets the flag (the training loop stops at a step boundary).

    A start-up signal whose Interrupted was swallowed between the last stage boundary and here
    (a finaliser or library ``except`` while the checkpoint is read) ends the run now, before
    the first step: switching to defer mode first would train a step and save a checkpoint for
    a stop that was asked for before training."""
    check()
    _state.defer = True
    _state.training = True
    stage("training")


def check() -> None:
    """At a stage boundary in abort mode: stop now if a signal came in a critical block."""
    if _state.signum is not None and not _state.defer and not _state.critical:
        raise Interrupted(_state.signum, _state.stage)


@contextmanager
def critical(name: str) -> Iterator[None]:
    """A block that must finish (a checkpoint, the final output, a rename sequence): a signal
    inside it is honoured at its end (abort mode) or by the training loop (defer mode)."""
    previous = _state.stage
    _state.critical += 1
    stage(name)
    try:
        yield
    finally:
        _state.critical -= 1
        _state.stage = previous
    check()


def reset_for_tests() -> None:
    """Forget a received signal and go back to abort mode (unit tests only)."""
    global _state
    installed = _state.installed
    _state = _State()
    _state.installed = installed


__all__ = [
    "SIGNALS",
    "Interrupted",
    "begin_training",
    "check",
    "critical",
    "ending",
    "install",
    "requested",
    "seconds_since_request",
    "signum",
    "stage",
    "training_started",
]

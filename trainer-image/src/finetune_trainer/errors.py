"""Exceptions with the exit codes of docs/contract.md (section 4).

Every failure the trainer can explain maps to one of these; ``main`` turns them into the process
exit code and the one-line termination message the operator shows in ``status.message``.
"""

from __future__ import annotations

import os

TERMINATION_LOG = "/dev/termination-log"


class TrainerError(Exception):
    """Base class: an explained failure with an exit code and an operator-facing reason."""

    exit_code = 1
    reason = "Error"


class ConfigError(TrainerError):
    """The config is missing, unparsable or breaks the contract (also: an impossible backend)."""

    exit_code = 2
    reason = "BadConfig"


class DataError(TrainerError):
    """A record is malformed or the data is unreadable; the message names file, row and field."""

    exit_code = 3
    reason = "BadData"


class ModelNotFoundError(TrainerError):
    """The model (or its tokenizer / config.json) cannot be found or loaded."""

    exit_code = 4
    reason = "ModelNotFound"


class PlanRefusedError(TrainerError):
    """The memory planner says the job cannot fit the GPUs it was given."""

    exit_code = 5
    reason = "PlanRefused"


class DiskFullError(TrainerError):
    """No space left on the work volume (ENOSPC); not retried: the claim must be enlarged first.

    The message names the path, the bytes needed when known, and the claim."""

    exit_code = 6
    reason = "DiskFull"


class SourceUnavailableError(TrainerError):
    """A transient network fault fetching data or a model (DNS, refused, reset, timeout, 429, 5xx)
    that outlasted the retries inside the pod; the operator retries the attempt."""

    exit_code = 7
    reason = "SourceUnavailable"


class DivergedError(TrainerError):
    """The training or eval loss became NaN or infinite: the weights are lost from that step on.

    Not retried (the same settings diverge again); the message names the step, the learning rate
    and the last complete checkpoint, which predates the divergence."""

    exit_code = 8
    reason = "Diverged"


class ExportFailedError(TrainerError):
    """``finetune-trainer export``: at least one export failed (export.json says which); the
    trained adapter is untouched."""

    exit_code = 9
    reason = "ExportFailed"


class RendezvousError(TrainerError):
    """Several nodes could not meet within the bounded wait (the master's DNS name, or every
    rank joining node 0's store); the operator restarts all the attempt's pods."""

    exit_code = 12
    reason = "RendezvousFailed"


class SuspendedError(TrainerError):
    """Stopped on SIGTERM after writing a complete checkpoint."""

    exit_code = 10
    reason = "Suspended"


class CudaOOMError(TrainerError):
    """CUDA ran out of memory; the message says what to change."""

    exit_code = 11
    reason = "CudaOOM"


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SUSPENDED = SuspendedError.exit_code
EXIT_OOM = CudaOOMError.exit_code


def write_termination_log(message: str) -> None:
    """Best effort: the line explaining the failure, which Kubernetes copies into the status.

    ``FTO_TERMINATION_LOG`` overrides the path (tests, and the launcher's per-rank files).
    """
    path = os.environ.get("FTO_TERMINATION_LOG", TERMINATION_LOG)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(message.replace("\n", " ")[:4000])
    except OSError:
        pass

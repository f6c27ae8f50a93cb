"""ENOSPC, wherever it surfaces, becomes ``DiskFullError`` (exit 6, not retried).

A full volume shows up in many shapes: ``OSError(ENOSPC)`` from Python's own I/O (json, shutil,
Arrow's ``save_to_disk``, downloads), the same wrapped in another exception's ``__cause__`` or
``__context__``, and torch's zip writer, which loses the errno and raises
``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 131392 vs 131280`` (or
``PytorchStreamWriter failed writing file``). The last shapes are only called disk-full when the
volume really has (almost) no space left, so an unrelated writer bug keeps its own message.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from finetune_trainer.errors import DiskFullError

# torch.save / safetensors' messages when a write came up short; errno is lost on the way
_TORCH_SHORT_WRITE = re.compile(
    r"inline_container\.cc.*unexpected pos|PytorchStreamWriter failed writing|"
    r"No space left on device|file write failed",
    re.IGNORECASE,
)
# "almost no space": below this a short write is a full disk, not a bug
NEARLY_FULL_BYTES = 64 * 2**20


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def enospc_path(exc: BaseException) -> tuple[bool, str | None]:
    """(is an ENOSPC by errno, the file it names) for the exception or one in its chain."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True, str(e.filename) if e.filename else None
    return False, None


def free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def looks_short_write(exc: BaseException) -> bool:
    return any(_TORCH_SHORT_WRITE.search(str(e)) for e in _chain(exc))


def describe(
    path: Path | str, claim: str | None, *, free: int | None, needed: int | None = None
) -> str:
    parts = [f"no space left on the volume at {path}"]
    if free is not None:
        parts.append(f"{_size(free)} free")
    if needed:
        parts.append(f"about {_size(needed)} needed")
    where = f"claim {claim}" if claim else "the job's volume claim"
    return "; ".join(parts) + f". Enlarge {where} or free space; complete checkpoints are kept"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def as_disk_full(
    exc: BaseException, work: Path | None, claim: str | None, needed: int | None = None
) -> DiskFullError | None:
    """The ``DiskFullError`` this exception really is, or None."""
    if isinstance(exc, DiskFullError):
        return exc
    by_errno, filename = enospc_path(exc)
    if not by_errno:
        if work is None or not looks_short_write(exc):
            return None
        free = free_bytes(work)
        if free is None or free > NEARLY_FULL_BYTES:
            return None
    where: Path | str = filename or (work if work is not None else "?")
    free = free_bytes(Path(where)) if where != "?" else None
    full = DiskFullError(describe(where, claim, free=free, needed=needed))
    full.__cause__ = exc
    return full


__all__ = ["NEARLY_FULL_BYTES", "as_disk_full", "describe", "enospc_path", "looks_short_write"]

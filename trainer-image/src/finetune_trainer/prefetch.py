"""Read the base model's weight files into the page cache while the heavy imports run.

``import unsloth`` (with torch, transformers, TRL) takes ~20-30 s of mostly CPU on a cold pod, and
reading a 7B model's ~14 GB of safetensors from the volume is disk time the loader pays after it.
``start`` (called by the process entry right after the signal handlers, for ``train`` only) begins
a daemon thread that reads those files once, in the order the loader reads them, so that loading
finds them cached. It is an optimisation only and never fails or stops the run:

* every error (no config, unreadable files, a model given by hub id not yet in the cache) ends the
  thread quietly and is reported by ``summary()``;
* it reads at most ``FTO_PREFETCH_MAX_GIB`` (default 64) and at most half of MemAvailable, so it
  cannot push the pod into reclaim for nothing; ``FTO_PREFETCH=0`` turns it off;
* it is a daemon thread, reads in 16 MiB chunks (the GIL is released during each read) and the
  entry's ``os._exit`` does not wait for it; ``stop()`` ends it between two chunks.

Standard library only: it runs before torch is imported and must stay cheap.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_SWITCH = "FTO_PREFETCH"
ENV_MAX_GIB = "FTO_PREFETCH_MAX_GIB"
CHUNK = 16 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Outcome:
    """What the prefetch did; read by ``summary()`` (the thread writes, the main thread reads)."""

    files: int = 0
    bytes_read: int = 0
    started: float = 0.0
    finished: float | None = None  # time.monotonic() when the thread ended
    skipped: str | None = None  # why nothing (more) was read
    stop: threading.Event = field(default_factory=threading.Event)


_outcome: Outcome | None = None
_thread: threading.Thread | None = None


def command_and_config(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """The subcommand and ``--config`` value of the trainer's command line (no argparse: cheap)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    config = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    return command, config


def model_dirs(config: dict[str, object]) -> list[Path]:
    """Where the train command will read the base model from: ``model.path``, or the snapshots of
    ``model.name`` in the model cache that prepare downloaded into."""
    model = config.get("model")
    paths = config.get("paths")
    if not isinstance(model, dict):
        return []
    if isinstance(model.get("path"), str):
        return [Path(model["path"])]
    name = model.get("name")
    cache = paths.get("model_cache") if isinstance(paths, dict) else None
    if not isinstance(name, str) or not isinstance(cache, str):
        return []
    repo = "models--" + name.replace("/", "--")
    return sorted(Path(cache).glob(f"**/{repo}/snapshots/*"))[:1]


def weight_files(dirs: Sequence[Path]) -> list[Path]:
    """The weight files, safetensors preferred (what the loader reads), in the loader's order."""
    found: list[Path] = []
    for d in dirs:
        files = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))
        found.extend(f for f in files if f.is_file())
    return found


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def budget_bytes(env: dict[str, str], available: int | None) -> int:
    try:
        cap = int(float(env.get(ENV_MAX_GIB, "64")) * 2**30)
    except ValueError:
        cap = 64 * 2**30
    return max(0, min(cap, available // 2) if available is not None else cap)


def read_into_cache(files: Sequence[Path], budget: int, outcome: Outcome) -> None:
    """Read ``files`` in order (at most ``budget`` bytes); never raises."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        total = sum(f.stat().st_size for f in files)
        if total > budget:
            outcome.skipped = f"model {total} bytes > budget {budget} bytes"
            return
        for f in files:
            with f.open("rb", buffering=0) as fh:
                while not outcome.stop.is_set():
                    n = fh.readinto(view)
                    if not n:
                        break
                    outcome.bytes_read += n
            if outcome.stop.is_set():
                outcome.skipped = "stopped"
                return
            outcome.files += 1
    except Exception as exc:  # an optimisation only: the loader will meet (and report) real errors
        outcome.skipped = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.finished = time.monotonic()


def start(argv: Sequence[str], env: dict[str, str] | None = None) -> Outcome | None:
    """Start the prefetch for a ``train`` command line; returns its outcome holder, or None when
    it does not apply (other command, switched off, no config). Never raises."""
    global _outcome, _thread
    env = dict(os.environ) if env is None else env
    try:
        command, config_path = command_and_config(argv)
        if command != "train" or config_path is None or env.get(ENV_SWITCH, "1") == "0":
            return None
        config = json.loads(Path(config_path).read_text())
        outcome = Outcome(started=time.monotonic())
        files = weight_files(model_dirs(config))
        if not files:
            outcome.skipped = "no weight files found"
            outcome.finished = outcome.started
            _outcome = outcome
            return outcome
        budget = budget_bytes(env, mem_available_bytes())
        thread = threading.Thread(
            target=read_into_cache, args=(files, budget, outcome), name="prefetch", daemon=True
        )
        thread.start()
        _outcome, _thread = outcome, thread
        return outcome
    except Exception:  # e.g. an unreadable config: the trainer reports that itself, properly
        return None


def stop() -> None:
    if _outcome is not None:
        _outcome.stop.set()


def summary() -> str:
    """One log line: what was read, and whether it had finished by now."""
    o = _outcome
    if o is None:
        return "prefetch: off"
    state = (
        f"done in {o.finished - o.started:.1f} s"
        if o.finished is not None
        else f"still reading after {time.monotonic() - o.started:.1f} s"
    )
    extra = f" ({o.skipped})" if o.skipped else ""
    return f"prefetch: {o.files} files, {o.bytes_read / 2**30:.2f} GiB, {state}{extra}"

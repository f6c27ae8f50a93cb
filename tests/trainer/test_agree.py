"""Every rank resumes from the same checkpoint: rank 0 decides, a checkpoint that fails to load on
any rank is set aside by rank 0 and the previous complete one is tried (real gloo processes)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from finetune_trainer import agree, checkpoints, stop

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")


def _checkpoints(root: Path, steps: tuple[int, ...]) -> None:
    for step in steps:
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (d / checkpoints.MARKER).write_text("{}")


def _rank(
    rank: int, world: int, port: int, root: str, bad: dict[str, list[int]], *out: str
) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ckpts = Path(root)

        def probe(path: Path) -> str | None:
            # a load failure only this rank sees (e.g. its own RNG state)
            return "cannot load" if rank in bad.get(path.name, []) else None

        first = checkpoints.newest_complete(ckpts) if rank == 0 else None
        got = agree.agree(ckpts, first, probe, agree.TorchCollective(), rank)
        result = {"path": got.path.name if got.path else None, "skipped": got.skipped}
        Path(out[0], f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, bad: dict[str, list[int]], world: int = 2) -> list[dict[str, object]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "checkpoints"
    mp.spawn(_rank, args=(world, port, str(root), bad, str(tmp_path)), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def test_ranks_agree_on_the_newest_when_it_loads_everywhere(tmp_path: Path) -> None:
    _checkpoints(tmp_path / "checkpoints", (2, 4, 6))
    results = _run(tmp_path, {})
    assert [r["path"] for r in results] == ["checkpoint-6", "checkpoint-6"]
    assert all(r["skipped"] == [] for r in results)


def test_a_checkpoint_one_rank_cannot_load_is_set_aside_for_all(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _checkpoints(root, (2, 4, 6))
    # checkpoint-6 fails on rank 1 only, checkpoint-4 on rank 0 only: both fall to checkpoint-2
    results = _run(tmp_path, {"checkpoint-6": [1], "checkpoint-4": [0]})
    assert [r["path"] for r in results] == ["checkpoint-2", "checkpoint-2"]
    assert [s["path"] for s in results[0]["skipped"]] == [  # type: ignore[attr-defined]
        "checkpoints/checkpoint-6",
        "checkpoints/checkpoint-4",
    ]
    assert results[0]["skipped"][0]["error"] == "failed on another rank"  # type: ignore[index]
    assert results[1]["skipped"][0]["error"] == "cannot load"  # type: ignore[index]
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint-2",
        "checkpoint-4.corrupt",
        "checkpoint-6.corrupt",
    ]


def test_none_loads_everywhere_gives_no_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _checkpoints(root, (2,))
    results = _run(tmp_path, {"checkpoint-2": [1]})
    assert [r["path"] for r in results] == [None, None]
    assert not (root / "checkpoint-2").exists() and (root / "checkpoint-2.corrupt").is_dir()


class _Trainer:
    """What probe_load calls of HF Trainer: loading the weights (here: nothing to load)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def _load_from_checkpoint(self, path: str) -> None:
        if self.error is not None:
            raise self.error


def test_probe_load_checks_the_weights_and_the_optimizers_structure(tmp_path: Path) -> None:
    from finetune_trainer import train

    root = tmp_path / "checkpoints"
    _checkpoints(root, (2,))
    ckpt = root / "checkpoint-2"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    assert train.probe_load(_Trainer(), ckpt) is None
    weights = train.probe_load(_Trainer(RuntimeError("size mismatch for lora_A")), ckpt)
    assert weights == "RuntimeError: size mismatch for lora_A"
    torch.save({"not": "an optimizer"}, ckpt / "optimizer.pt")  # whole, but the wrong state
    assert train.probe_load(_Trainer(), ckpt) == "optimizer.pt holds no optimizer state"
    (ckpt / "trainer_state.json").write_text("{cut")
    assert "trainer_state.json" in (train.probe_load(_Trainer(), ckpt) or "")


class _SignalledLoad:
    """A load cut by SIGTERM whose Interrupted the library turned into its own error, as torch's
    unpickler does ("ValueError: could not determine the shape of object type
    'torch.storage.UntypedStorage'", seen in the SIGTERM chaos test)."""

    def _load_from_checkpoint(self, path: str) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs at the next bytecode boundary
                pass
        except stop.Interrupted as exc:
            raise ValueError("could not determine the shape of object type") from exc


def test_a_signal_during_the_load_suspends_and_never_condemns_the_checkpoint(
    tmp_path: Path, handlers: None
) -> None:
    from finetune_trainer import train

    root = tmp_path / "checkpoints"
    _checkpoints(root, (2, 4))
    stop.stage("reading the checkpoint")
    with pytest.raises(stop.Interrupted, match="signal 15 during reading the checkpoint"):
        train.probe_load(_SignalledLoad(), root / "checkpoint-4")
    # the single-process path: the resume loop's fallback must not set checkpoint-4 aside
    error = ValueError("could not determine the shape of object type")
    assert train.fallback(error, root / "checkpoint-4", root, 1) is None
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_without_a_signal_a_failed_load_falls_back_and_sets_the_checkpoint_aside(
    tmp_path: Path, handlers: None
) -> None:
    from finetune_trainer import train

    root = tmp_path / "checkpoints"
    _checkpoints(root, (2, 4))
    error = RuntimeError("size mismatch for lora_A")
    assert train.fallback(error, root / "checkpoint-4", root, 1) == root / "checkpoint-2"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4.corrupt"]

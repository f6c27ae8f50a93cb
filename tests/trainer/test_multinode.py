"""Several nodes on CPU with gloo: two launchers on this machine, each one "node" of a job, wired
as the operator wires pods (PET_* variables), sharing one work directory as pods share the
job's volume. Also the bounded waits and the topology read from the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import launch, rendezvous
from finetune_trainer.errors import ConfigError, RendezvousError
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.harness.wait import wait_until
from tests.trainer.conftest import base_config, progress_reports, trainer_env, write_config
from tests.trainer.test_train import prepare_in_process, summary

# --------------------------------------------------------------------------- pure: topology


def test_topology_without_pet_variables_is_one_local_node() -> None:
    topo = rendezvous.topology({}, 2, lambda: 4242)
    assert topo == rendezvous.Topology(1, 0, 2, "127.0.0.1", 4242)
    assert [launch.rank_env(topo, i)["RANK"] for i in (0, 1)] == ["0", "1"]


def test_topology_from_pet_variables_numbers_ranks_by_node() -> None:
    env = {
        "PET_NNODES": "3",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "bot-1-node-0.bot-nodes",
        "PET_MASTER_PORT": "29500",
    }
    topo = rendezvous.topology(env, 2, lambda: 1)
    assert (topo.world_size, topo.multi_node) == (6, True)
    assert launch.rank_env(topo, 1) == {
        "FTO_LAUNCHED": "1",
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "6",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "2",
        "MASTER_ADDR": "bot-1-node-0.bot-nodes",
        "MASTER_PORT": "29500",
    }


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"PET_NNODES": "2"}, "PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT is not"),
        ({"PET_NODE_RANK": "2"}, "outside 0..1"),
        ({"PET_NODE_RANK": "x"}, "is not an integer"),
        ({"PET_MASTER_PORT": "70000"}, "is not a TCP port"),
        ({"PET_NPROC_PER_NODE": "4"}, "differs from the plan's 2 processes"),
    ],
)
def test_topology_refuses_inconsistent_variables(env: dict[str, str], error: str) -> None:
    base = {
        "PET_NNODES": "2",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "m",
        "PET_MASTER_PORT": "29500",
    }
    full = env if "PET_NNODES" in env and len(env) == 1 else {**base, **env}
    with pytest.raises(ConfigError, match=error):
        rendezvous.topology(full, 2, lambda: 1)


def test_waiting_for_the_masters_name_is_bounded() -> None:
    now = [0.0]
    calls: list[str] = []

    def resolve(host: str) -> str:
        calls.append(host)
        if now[0] < 3:
            raise OSError("Name or service not known")
        return "198.18.0.5"

    def sleep(s: float) -> None:
        now[0] += s

    rendezvous.wait_for_name("m.svc", 10, resolve=resolve, clock=lambda: now[0], sleep=sleep)
    assert now[0] >= 3 and set(calls) == {"m.svc"}

    def never(host: str) -> str:
        raise OSError("Name or service not known")

    now[0] = 0.0
    with pytest.raises(RendezvousError, match=r"m.svc did not resolve within 2 s"):
        rendezvous.wait_for_name("m.svc", 2, resolve=never, clock=lambda: now[0], sleep=sleep)
    assert now[0] <= 2


def test_an_explained_failure_is_the_pods_exit_code_over_its_peers_errors() -> None:
    assert launch.combine([-15, 12], terminated=False) == 12
    assert launch.combine([1, 12], terminated=False) == 12
    assert launch.combine([1, -9], terminated=False) == 1


# ------------------------------------------------------------------- real processes, gloo


def _node_env(work: Path, node: int, nnodes: int, addr: str, port: int) -> dict[str, str]:
    env = trainer_env(work)
    env.update(
        PET_NNODES=str(nnodes),
        PET_NPROC_PER_NODE="1",
        PET_NODE_RANK=str(node),
        PET_MASTER_ADDR=addr,
        PET_MASTER_PORT=str(port),
        FTO_TERMINATION_LOG=str(work / f"termination-log-{node}"),
    )
    return env


def start_node(
    config: Path, work: Path, node: int, port: int, *, nnodes: int = 2, addr: str = "localhost",
    **extra: str,
) -> subprocess.Popen[str]:  # fmt: skip
    env = {**_node_env(work, node, nnodes, addr, port), **extra}
    log = (work / f"node-{node}.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _logs(work: Path) -> str:
    return "\n".join(p.read_text()[-2500:] for p in sorted(work.glob("node-*.log")))


def _config(tmp: Path, name: str, data: Path, model: Path, **over: Any) -> tuple[Path, Path]:
    work = tmp / name
    cfg = write_config(
        tmp / f"{name}.json",
        base_config(
            work,
            model,
            data,
            training={"epochs": 2, "batch_size": 8, "learning_rate": 0.01},
            checkpoint={"every_steps": 3, "keep": 5},
            **over,
        ),
    )
    return cfg, work


@pytest.mark.slow
def test_two_nodes_train_like_one_node_of_two_ranks_and_survive_a_stop_of_node_one(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(64, seed=5))
    # the reference: one node, two ranks (the same world of 2 gloo ranks), uninterrupted
    ref_cfg, ref_work = _config(tmp_path, "one-node", data, tiny_model, gpus=2)
    prepare_in_process(ref_cfg, ref_work, monkeypatch)
    ref = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "train", "--config", str(ref_cfg)],
        env=trainer_env(ref_work),
        check=False,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    cfg, work = _config(tmp_path, "two-nodes", data, tiny_model, gpus=0, nodes=2)
    prepared = prepare_in_process(cfg, work, monkeypatch)
    assert (prepared["plan"]["processes"], prepared["plan"]["micro_batch_size"]) == (1, 4)
    port = launch.free_port()
    nodes = [start_node(cfg, work, i, port) for i in (0, 1)]
    wait_until(
        lambda: (
            progress_reports(work).get("progress.json", {}).get("step", 0) >= 2
            or any(p.poll() is not None for p in nodes)
        ),
        timeout=300,
        interval=0.05,
        message=lambda: f"step 2 on two nodes: {_logs(work)}",
    )
    assert all(p.poll() is None for p in nodes), _logs(work)
    nodes[1].send_signal(signal.SIGTERM)  # only node 1's pod is stopped (deleted, evicted)
    codes = [p.wait(timeout=200) for p in nodes]
    assert codes == [10, 10], _logs(work)  # node 0 stopped on the same step, with a checkpoint
    step = progress_reports(work)["progress.json"]["step"]
    ckpt = work / "checkpoints" / f"checkpoint-{step}"
    assert (ckpt / "COMPLETE").is_file(), _logs(work)
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()

    port = launch.free_port()
    nodes = [start_node(cfg, work, i, port) for i in (1, 0)]  # any start order
    assert [p.wait(timeout=400) for p in nodes] == [0, 0], _logs(work)
    s, r = summary(work), summary(ref_work)
    assert s["resumed_from"] == ckpt.name and s["steps"] == r["steps"] == prepared["total_steps"]
    assert s["losses"] == r["losses"]  # per step, exactly: the same training, resumed
    assert (work / "output" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_node_without_its_master_fails_named_and_bounded(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(16, seed=5))
    cfg, work = _config(tmp_path, "alone", data, tiny_model, gpus=0, nodes=2)
    prepare_in_process(cfg, work, monkeypatch)
    fast = {"FTO_RENDEZVOUS_TIMEOUT_S": "3"}
    # no DNS name for the master (node 0's pod missing / no cluster DNS)
    proc = start_node(cfg, work, 1, 29500, addr="fto-no-such-node.invalid", **fast)
    assert proc.wait(timeout=120) == 12, _logs(work)
    told = (work / "termination-log-1").read_text()
    assert told.startswith("RendezvousFailed: the master's name fto-no-such-node.invalid")
    # a name, but node 0 never joins: the rendezvous times out
    proc = start_node(cfg, work, 1, launch.free_port(), **fast)
    assert proc.wait(timeout=120) == 12, _logs(work)
    told = (work / "termination-log-1").read_text()
    assert "RendezvousFailed: rank 1/2: the rendezvous at localhost:" in told, told
    assert "within 3 s" in told
    assert not os.path.exists(work / "checkpoints" / "checkpoint-1")
    assert json.loads((work / "prepare-result.json").read_text())["ok"]

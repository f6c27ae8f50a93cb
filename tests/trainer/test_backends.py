"""Backend choice, dtype, target modules, tiny architectures and the CLI's exit codes."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from finetune_trainer import backends
from finetune_trainer import main as cli
from finetune_trainer.config import parse_config
from finetune_trainer.errors import ConfigError

CPU = backends.Device(cuda=False, bf16=False, local_rank=0, world_size=1)
GPU = backends.Device(cuda=True, bf16=True, local_rank=0, world_size=1)


def cfg(**kw: object) -> object:
    base = {"version": 1, "job": {"name": "j"}, "model": {"path": "/m"}, "dataset": {"path": "/d"}}
    return parse_config({**base, **kw})


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unsloth needs an NVIDIA GPU"):
        backends.resolve(cfg(backend="unsloth"), CPU)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="qlora needs an NVIDIA GPU"):
        backends.resolve(cfg(method="qlora"), CPU)  # type: ignore[arg-type]
    assert backends.resolve(cfg(), CPU) == "transformers"  # type: ignore[arg-type]
    monkeypatch.setattr(backends, "unsloth_available", lambda: True)
    assert backends.resolve(cfg(), GPU) == "unsloth"  # type: ignore[arg-type]
    assert backends.resolve(cfg(backend="transformers"), GPU) == "transformers"  # type: ignore[arg-type]
    monkeypatch.setattr(backends, "unsloth_available", lambda: False)
    assert backends.resolve(cfg(), GPU) == "transformers"  # type: ignore[arg-type]


def test_dtype_and_targets() -> None:
    assert backends.resolve_dtype(cfg(), CPU) == "fp32"  # type: ignore[arg-type]
    assert backends.resolve_dtype(cfg(), GPU) == "bf16"  # type: ignore[arg-type]
    old = backends.Device(cuda=True, bf16=False, local_rank=0, world_size=1)
    assert backends.resolve_dtype(cfg(), old) == "fp16"  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        backends.resolve_dtype(cfg(training={"precision": "bf16"}), CPU)  # type: ignore[arg-type]
    for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma"):
        assert backends.target_modules(cfg(), arch) == [  # type: ignore[arg-type]
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    custom = cfg(lora={"target_modules": ["q_proj"]})
    assert backends.target_modules(custom, "llama") == ["q_proj"]  # type: ignore[arg-type]


def test_unsloth_on_cpu_exits_2(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "log"))
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "job": {"name": "j"},
                "model": {"path": str(tiny_model)},
                "dataset": {"path": str(tmp_path / "d.jsonl")},
                "backend": "unsloth",
                "paths": {"work": str(tmp_path / "w")},
            }
        )
    )
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    monkeypatch.setenv("FTO_PROGRESS_FILE", str(tmp_path / "p.json"))
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(tmp_path / "none"))
    assert cli.main(["train", "--config", str(path)]) == 2
    assert "unsloth needs an NVIDIA GPU" in (tmp_path / "log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma"])
def test_make_tiny_model_each_architecture(tmp_path: Path, arch: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main(["make-tiny-model", str(tmp_path / arch), "--arch", arch, "--seed", "1"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / arch)
    tok = AutoTokenizer.from_pretrained(tmp_path / arch)
    assert model.config.model_type == arch and tok.chat_template
    ids = tok("what is the code of cat?", return_tensors="pt")
    with torch.no_grad():
        assert model(**ids).logits.shape[-1] == model.config.vocab_size


def test_tiny_model_is_deterministic(tmp_path: Path, tiny_model: Path) -> None:
    from finetune_trainer.tiny import make_tiny_model

    again = make_tiny_model(tmp_path / "again", "llama", seed=0)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes()


def test_compiled_kernels_are_kept_on_the_work_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = cfg(paths={"work": str(tmp_path / "work")})
    backends._keep_compiled_kernels(config)  # type: ignore[arg-type]
    # inductor resolves its cache when it compiles, so setting it after `import unsloth` holds
    assert Path(cache_dir()) == tmp_path / "work" / ".cache" / "torch-compile"
    assert (tmp_path / "work" / ".cache" / "torch-compile").is_dir()


def test_block_compile_is_off_unless_the_pod_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))  # no GPU here
    monkeypatch.delenv("UNSLOTH_BLOCK_COMPILE", raising=False)
    backends.early_import("unsloth")
    assert os.environ["UNSLOTH_BLOCK_COMPILE"] == "0"
    monkeypatch.setenv("UNSLOTH_BLOCK_COMPILE", "1")  # spec.podTemplate.env
    backends.early_import("unsloth")
    assert os.environ["UNSLOTH_BLOCK_COMPILE"] == "1"


OLD_UNSLOTH = (
    "x = 1\nif DEVICE_COUNT == 1:\n    from accelerate.utils.dataclasses import DistributedType\n"
)
NEW_UNSLOTH = 'if DEVICE_COUNT == 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:\n    pass\n'


def test_unsloth_without_the_world_size_guard_falls_back_when_distributed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """unslothai/unsloth#4142: before the fix one visible GPU turned torch.distributed off even
    under WORLD_SIZE > 1 (multi-node, one GPU per node); 2026.10.9 has the guard."""
    assert not backends.unsloth_runs_distributed(OLD_UNSLOTH)
    assert backends.unsloth_runs_distributed(NEW_UNSLOTH)
    two = backends.Device(cuda=True, bf16=True, local_rank=0, world_size=2)
    monkeypatch.setattr(backends, "unsloth_available", lambda: True)
    monkeypatch.setattr(backends, "_installed_unsloth_runs_distributed", lambda: False)
    assert backends.resolve(cfg(), GPU) == "unsloth"  # type: ignore[arg-type]  # one process
    assert backends.resolve(cfg(), two) == "transformers"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unslothai/unsloth#4142"):
        backends.resolve(cfg(backend="unsloth"), two)  # type: ignore[arg-type]
    monkeypatch.setattr(backends, "_installed_unsloth_runs_distributed", lambda: True)
    assert backends.resolve(cfg(), two) == "unsloth"  # type: ignore[arg-type]

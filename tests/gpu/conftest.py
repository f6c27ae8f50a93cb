"""The GPU tier: the trainer's CUDA paths (Unsloth and transformers backends) on a real GPU.

Runs where a CUDA GPU is visible (`bench/gpu/run.sh gputest` on the lent GPU machine installs the
wheels and runs it once per backend: Unsloth patches transformers globally when imported, so the two
backends never share a process). Elsewhere (CI, laptops) every test here is skipped with the reason
shown in pytest's summary; `docs/gpu-tests.md` records the last real run.

``FTO_GPU_BACKEND`` picks the backend of this process: unsloth (default) or transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NO_GPU = (
    "no CUDA GPU on this machine: the gpu tier runs on the lent GPU machine "
    "(bench/gpu/run.sh gputest); docs/gpu-tests.md has its last results"
)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    cuda = _cuda()
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if not cuda:
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(scope="session")
def backend_name() -> str:
    name = os.environ.get("FTO_GPU_BACKEND", "unsloth")
    assert name in ("unsloth", "transformers"), name
    return name


def _llama(factory: pytest.TempPathFactory, name: str, **geometry: int) -> Path:
    """A random-initialised Llama (intermediate = 2 x hidden) + the local tokenizer."""
    from finetune_trainer.tiny import make_tiny_model

    intermediate = 2 * geometry["hidden"]
    return make_tiny_model(
        factory.mktemp("models") / name, "llama", seed=0, intermediate=intermediate,
        max_positions=4096, **geometry,
    )  # fmt: skip


@pytest.fixture(scope="session")
def learn_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the learning tests train: the CPU tier's geometry (2 layers, hidden 64, 4 heads).

    Measured 2026-11-30: with the test's own settings (LoRA r16, lr 2e-2, 20 epochs, packing on)
    LoRA learned the animal -> code mapping only with several narrow heads. On CPU (fp32, the
    transformers backend): hidden 64 with 4 heads of 16 answered 42 % of held-out records (eval
    loss 0.67); hidden 64 with 1 head of 64, 0 % (eval 1.56); hidden 128 with 2 heads of 64, 0 %
    (eval 1.14); on H200 the 2-heads-of-64 model answered 6-8 % on both backends and the 4-layer,
    hidden-256 model 0 %, while full fine-tuning learned on all of them. ``FTO_GPU_LEARN_GEOMETRY``
    ("hidden,layers,heads,kv_heads") overrides the geometry for such comparisons.
    """
    hidden, layers, heads, kv = (
        int(x) for x in os.environ.get("FTO_GPU_LEARN_GEOMETRY", "64,2,4,2").split(",")
    )
    return _llama(tmp_path_factory, "learn-llama", hidden=hidden, layers=layers, heads=heads,
                  kv_heads=kv)  # fmt: skip


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random-initialised Llama (4 layers, hidden 256, head_dim 64) + local tokenizer."""
    return _llama(tmp_path_factory, "small-llama", hidden=256, layers=4, heads=4, kv_heads=2)

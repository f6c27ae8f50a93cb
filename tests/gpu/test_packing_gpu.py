"""Packed batches on the GPU backends: every sample trains as if it were alone.

The model is loaded through the trainer's own ``backends.load`` and fed by the trainer's own
``packing.Collator``, exactly as ``train.run`` does, in training mode (LoRA dropout 0) without
gradients. Tolerances are for bf16: logits are compared by relative L2 norm, losses relatively; a
control run without sample boundaries shows each check would catch a leak.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import base_config

LOGITS_TOLERANCE = 2e-2  # relative L2 of a sample's logits, packed vs alone (bf16 tilings)
LOSS_TOLERANCE = 1e-2  # relative difference of a sample's mean loss
LENGTHS = (57, 23, 101, 40, 9)


@pytest.fixture(scope="module")
def loaded(backend_name: str, small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from finetune_trainer import backends
    from finetune_trainer.config import parse_config

    work = tmp_path_factory.mktemp("work")
    cfg = base_config(
        work, small_model, work / "unused.jsonl", backend=backend_name, gpus=1,
        lora={"r": 16, "alpha": 32, "dropout": 0.0},
        training={"max_seq_length": 1024, "gradient_checkpointing": True},
    )  # fmt: skip
    config = parse_config(cfg)
    device = backends.detect_device()
    backend = backends.resolve(config, device)
    assert backend == backend_name
    backends.early_import(backend)
    return backends.load(config, backend, device, None, "single")


@pytest.fixture()
def model(loaded: Any) -> Iterator[Any]:
    import torch

    loaded.model.train()
    with torch.no_grad():
        yield loaded.model


def _samples(vocab: int, seed: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in LENGTHS]


def _collator(loaded: Any, isolate: bool = True) -> Any:
    from finetune_trainer.packing import Collator

    return Collator(0, isolate=isolate, lengths_key=loaded.backend == "unsloth")


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    batch = {k: v.to("cuda") for k, v in batch.items() if k != "labels"}
    return model(**batch, use_cache=False).logits[0].float()


def _row(samples: list[list[int]]) -> dict[str, Any]:
    return {"input_ids": [t for s in samples for t in s], "seq_lengths": [len(s) for s in samples]}


def _rel(a: Any, b: Any) -> float:
    import torch

    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _sample_loss(logits: Any, ids: list[int]) -> float:
    import torch

    target = torch.tensor(ids[1:], device=logits.device)
    return float(torch.nn.functional.cross_entropy(logits[:-1], target))


def _split(flat: Any, samples: list[list[int]]) -> list[Any]:
    out, start = [], 0
    for s in samples:
        out.append(flat[start : start + len(s)])
        start += len(s)
    return out


def test_packed_per_sample_losses_equal_the_samples_run_one_by_one(loaded: Any, model: Any) -> None:
    import torch

    samples = _samples(len(loaded.tokenizer), seed=1)
    packed = _split(_logits(model, _collator(loaded)([_row(samples)])), samples)
    leaked = _split(
        _logits(model, {"input_ids": _collator(loaded)([_row(samples)])["input_ids"]}), samples
    )  # control: the same row without boundaries (one causal sequence)
    worst, worst_leak = 0.0, 0.0
    for s, got, leak in zip(samples, packed, leaked, strict=True):
        alone = _logits(model, {"input_ids": torch.tensor([s])})  # plain causal, no packing
        want = _sample_loss(alone, s)
        worst = max(worst, abs(_sample_loss(got, s) - want) / want)
        worst_leak = max(worst_leak, _rel(leak, alone))
        assert _rel(got, alone) <= LOGITS_TOLERANCE, (len(s), _rel(got, alone))
    assert worst <= LOSS_TOLERANCE, worst
    assert worst_leak > 10 * LOGITS_TOLERANCE, worst_leak  # the check can fail


def test_the_trained_loss_of_a_packed_batch_equals_the_padded_batch_loss(
    loaded: Any, model: Any
) -> None:
    """What the optimizer sees: the backend's own training loss (Unsloth's fused cross-entropy)
    over a packed micro-batch equals the token-mean loss of the same samples padded."""
    samples = _samples(len(loaded.tokenizer), seed=2)
    examples = [{"input_ids": s, "labels": s} for s in samples]
    packed = {k: v.to("cuda") for k, v in _collator(loaded)(examples).items()}
    padded = {k: v.to("cuda") for k, v in _collator(loaded, isolate=False)(examples).items()}
    loss_packed = float(model(**packed, use_cache=False).loss)
    loss_padded = float(model(**padded, use_cache=False).loss)
    assert abs(loss_packed - loss_padded) / loss_padded <= LOSS_TOLERANCE, (
        loss_packed,
        loss_padded,
    )


def test_changing_one_sample_leaves_every_other_sample_in_its_row_unchanged(
    loaded: Any, model: Any
) -> None:
    from finetune_trainer import isolation

    samples = _samples(len(loaded.tokenizer), seed=3)
    base = _split(_logits(model, _collator(loaded)([_row(samples)])), samples)
    for k in range(len(samples) - 1):
        changed = list(samples)
        changed[k] = _samples(len(loaded.tokenizer), seed=10 + k)[k]
        after = _split(_logits(model, _collator(loaded)([_row(changed)])), changed)
        for j in range(len(samples)):
            if j != k:
                assert _rel(after[j], base[j]) <= 1e-3, (k, j, _rel(after[j], base[j]))
    verdict = isolation.check(model, _collator(loaded), len(loaded.tokenizer))
    assert verdict.isolated, verdict.reason

"""Padding-free packing: bins are valid, and a packed batch gives the unpacked loss."""

from __future__ import annotations

import functools
import operator
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from finetune_trainer.packing import best_fit_decreasing, labels_from_mask, pack


@given(st.lists(st.integers(1, 64), min_size=1, max_size=200), st.integers(64, 256))
def test_bins_hold_every_sample_once_within_capacity(lengths: list[int], capacity: int) -> None:
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert bins == best_fit_decreasing(lengths, capacity)  # deterministic


def test_pack_keeps_tokens_labels_and_lengths() -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
            "completion_mask": [[0, 1, 1], [0, 1], [0, 0, 1, 1]],
        }
    )
    packed = pack(ds, 6)
    assert len(packed) == 2
    rows = packed.to_list()
    assert rows[0] == {
        "input_ids": [6, 7, 8, 9, 4, 5],
        "labels": [-100, -100, 8, 9, -100, 5],
        "seq_lengths": [4, 2],
    }
    assert rows[1]["labels"] == labels_from_mask([1, 2, 3], [0, 1, 1])


def test_packed_loss_equals_unpacked_loss(tiny_model: Path) -> None:
    """Samples packed in one row with restarting position ids must not see each other.

    As in training, without a KV cache: transformers detects packed rows only when no cache is
    passed (``use_cache=False``; train.py makes sure of it).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(5, 400, (n,), generator=gen).tolist() for n in (13, 7, 21, 9)]
    examples = [{"input_ids": s, "labels": s} for s in samples]

    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [
            {
                "input_ids": functools.reduce(operator.iadd, samples, []),
                "labels": functools.reduce(operator.iadd, samples, []),
                "seq_lengths": [len(s) for s in samples],
            }
        ]
    )
    assert flat["input_ids"].shape == (1, 50) and "attention_mask" not in flat
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**flat, use_cache=False).loss
        # and per sample: the packed row's logits equal each sample's own logits
        logits = model(
            input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False
        ).logits[0]
        start = 0
        for s in samples:
            own = model(input_ids=torch.tensor([s])).logits[0]
            assert torch.allclose(logits[start : start + len(s)], own, atol=1e-5)
            start += len(s)
    assert torch.allclose(loss_packed, loss_padded, atol=1e-6), (loss_packed, loss_padded)

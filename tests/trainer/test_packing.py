"""Padding-free packing: bins are valid, and a packed batch gives the unpacked loss."""

from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from finetune_trainer.packing import (
    IGNORE,
    Collator,
    best_fit_decreasing,
    flatten,
    labels_from_mask,
    pack,
    pad,
)


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


@given(st.lists(st.lists(st.integers(1, 20), min_size=1, max_size=5), min_size=1, max_size=4))
def test_flatten_keeps_every_sample_and_marks_its_boundaries(rows: list[list[int]]) -> None:
    """Each example is a packed row of samples of the given lengths; tokens number the samples."""
    examples = []
    for r, lengths in enumerate(rows):
        ids = [100 * r + k for k, n in enumerate(lengths) for _ in range(n)]
        examples.append({"input_ids": ids, "labels": ids, "seq_lengths": lengths})
    flat = flatten(examples)
    assert flat["seq_lengths"] == [n for lengths in rows for n in lengths]
    assert flat["input_ids"] == [t for ex in examples for t in ex["input_ids"]]
    start = 0
    for n in flat["seq_lengths"]:
        assert flat["position_ids"][start : start + n] == list(range(n))
        # no sample's last token is trained to predict the next sample's first token
        assert flat["labels"][start] == IGNORE
        assert flat["labels"][start + 1 : start + n] == flat["input_ids"][start + 1 : start + n]
        start += n
    assert start == len(flat["input_ids"]) == len(flat["labels"]) == len(flat["position_ids"])


def test_flatten_refuses_lengths_that_do_not_cover_the_row() -> None:
    import pytest

    with pytest.raises(ValueError, match="do not cover"):
        flatten([{"input_ids": [1, 2, 3], "seq_lengths": [2]}])


def test_collator_pads_when_not_isolating_and_emits_lengths_for_unsloth() -> None:
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    assert pad(examples, 0) == {
        "input_ids": [[5, 6, 7], [8, 0, 0]],
        "labels": [[-100, 6, 7], [8, IGNORE, IGNORE]],
        "attention_mask": [[1, 1, 1], [1, 0, 0]],
    }
    plain = Collator(pad_token_id=0, isolate=False)(examples)
    assert plain["input_ids"].shape == (2, 3) and "position_ids" not in plain
    packed = Collator(pad_token_id=0, isolate=True, lengths_key=True)(examples)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7, IGNORE]]
    assert packed["packed_seq_lengths"].tolist() == [3, 1]
    assert "attention_mask" not in packed
    assert "packed_seq_lengths" not in Collator(0, isolate=True)(examples)


def _per_token_losses(logits: Any, labels: list[int]) -> Any:
    import torch

    target = torch.tensor(labels[1:])
    return torch.nn.functional.cross_entropy(logits[:-1], target, reduction="none")


def test_collated_packed_row_gives_every_sample_its_own_losses(tiny_model: Path) -> None:
    """The collator's flattened row, through the transformers backend's model, gives each sample
    the per-token losses it has alone, and the mean loss of a padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    gen = torch.Generator().manual_seed(1)
    samples = [torch.randint(5, 400, (n,), generator=gen).tolist() for n in (13, 7, 21, 9)]
    row = {
        "input_ids": functools.reduce(operator.iadd, samples, []),
        "seq_lengths": [len(s) for s in samples],
    }
    flat = Collator(pad_token_id=0, isolate=True)([row])
    padded = Collator(pad_token_id=0, isolate=False)([{"input_ids": s} for s in samples])
    with torch.no_grad():
        out = model(**flat, use_cache=False)
        mean_padded = model(**padded, use_cache=False).loss
        logits = out.logits[0]
        start = 0
        for s in samples:
            alone = model(input_ids=torch.tensor([s])).logits[0]
            got = _per_token_losses(logits[start : start + len(s)], s)
            want = _per_token_losses(alone, s)
            assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
            start += len(s)
    assert torch.allclose(out.loss, mean_padded, atol=1e-6), (out.loss, mean_padded)


def test_isolation_check_passes_on_the_real_model_and_fails_on_a_leaking_one(
    tiny_model: Path,
) -> None:
    """isolation.check proves isolation on the model training will use, and catches a model that
    ignores sample boundaries (a forward that drops position_ids sees one causal sequence)."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer import isolation

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.train()
    good = isolation.check(model, Collator(0, isolate=True), model.config.vocab_size)
    assert good.isolated, good.reason
    assert good.differential is not None and good.differential < 1e-5
    assert model.training  # the check restores training mode

    class Leaky(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs: object) -> object:
            kwargs.pop("position_ids", None)
            return self.inner(**kwargs)

    bad = isolation.check(Leaky(model), Collator(0, isolate=True), model.config.vocab_size)
    assert not bad.isolated
    assert bad.differential is not None and bad.differential > isolation.DIFFERENTIAL_TOLERANCE
    off = isolation.check(model, Collator(0, isolate=False), model.config.vocab_size)
    assert not off.isolated and off.reason == "packing is off"

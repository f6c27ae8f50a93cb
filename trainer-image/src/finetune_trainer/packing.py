"""Padding-free packing: several tokenized samples per row, each keeping its own positions.

Best-fit decreasing over sample lengths (deterministic: ties keep dataset order). A packed row holds
``input_ids``, ``labels`` and ``seq_lengths``; TRL's collator turns ``seq_lengths`` into
``position_ids`` that restart at 0 for each sample, and transformers builds a block-diagonal causal
mask from them (``masking_utils.find_packed_sequence_indices``), so samples never attend to each
other and the loss equals the unpacked one (tests/trainer/test_packing.py checks it).
The prepare stage and the trainer call the same function, so total steps are exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any


def labels_from_mask(input_ids: Sequence[int], completion_mask: Sequence[int]) -> list[int]:
    """Tokens outside the completion get label -100 (no loss)."""
    return [t if m else -100 for t, m in zip(input_ids, completion_mask, strict=True)]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices whose lengths sum to at most ``capacity``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        n = min(lengths[i], capacity)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (remaining - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def pack(dataset: Any, max_len: int) -> Any:
    """A ``datasets.Dataset`` of packed rows from one with input_ids (+ completion_mask/labels)."""
    import datasets

    columns = dataset.column_names
    ids: list[list[int]] = dataset["input_ids"]
    if "labels" in columns:
        labels: list[list[int]] = dataset["labels"]
    elif "completion_mask" in columns:
        labels = [
            labels_from_mask(a, m) for a, m in zip(ids, dataset["completion_mask"], strict=True)
        ]
    else:
        labels = [list(a) for a in ids]
    bins = best_fit_decreasing([len(a) for a in ids], max_len)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for b in bins:
        row_ids: list[int] = []
        row_labels: list[int] = []
        lengths: list[int] = []
        for i in b:
            row_ids += ids[i][:max_len]
            row_labels += labels[i][:max_len]
            lengths.append(min(len(ids[i]), max_len))
        out["input_ids"].append(row_ids)
        out["labels"].append(row_labels)
        out["seq_lengths"].append(lengths)
    return datasets.Dataset.from_dict(out)


def unpacked(dataset: Any) -> Any:
    """input_ids + labels rows (no packing)."""
    columns = dataset.column_names
    if "labels" in columns:
        return dataset.select_columns(["input_ids", "labels"])

    def to_labels(example: dict[str, Any]) -> dict[str, Any]:
        return {"labels": labels_from_mask(example["input_ids"], example["completion_mask"])}

    return dataset.map(to_labels, remove_columns=["completion_mask"])

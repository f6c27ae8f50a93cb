"""Packing: several tokenized samples per row, each isolated from the others, on every backend.

Best-fit decreasing over sample lengths (deterministic: ties keep dataset order). A packed row holds
``input_ids``, ``labels`` and ``seq_lengths``. The prepare stage and the trainer call the same
function, so total steps are exact.

``Collator`` is the trainer's own data collator (TRL's is not used: Unsloth turns TRL's
padding-free mode off for pre-tokenized data, and the model then saw every packed row as one
causal sequence). With packing on it flattens a micro-batch into one row and carries the sample
boundaries all the way into attention:
- ``position_ids`` restart at 0 for each sample (transformers builds a block-diagonal causal mask
  from them, ``masking_utils.find_packed_sequence_indices``);
- ``packed_seq_lengths`` (Unsloth backend) select Unsloth's varlen attention per sample;
- the label of each sample's first token is -100, so a sample's last token is never trained to
  predict the next sample's first token (the shifted loss would otherwise cross the boundary).
Per-sample losses then equal those of the samples run one by one (tests/trainer/test_packing.py on
CPU, tests/gpu on the Unsloth and transformers backends). With packing off it pads to the longest
row of the micro-batch. ``isolation.py`` checks at start-up that the loaded model really isolates.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE = -100  # label of a token that carries no loss


def labels_from_mask(input_ids: Sequence[int], completion_mask: Sequence[int]) -> list[int]:
    """Tokens outside the completion get label -100 (no loss)."""
    return [t if m else IGNORE for t, m in zip(input_ids, completion_mask, strict=True)]


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


def _row_lengths(example: Mapping[str, Any]) -> list[int]:
    lengths = example.get("seq_lengths")
    n = len(example["input_ids"])
    if lengths is None:
        return [n]
    out = [int(x) for x in lengths]
    if sum(out) != n or any(x <= 0 for x in out):
        raise ValueError(f"seq_lengths {out} do not cover a row of {n} tokens")
    return out


def flatten(examples: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """One row of every sample in ``examples`` (pure): ``input_ids``, ``labels`` (each sample's
    first label ignored), ``position_ids`` restarting per sample, and ``seq_lengths``."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    lengths: list[int] = []
    for ex in examples:
        row_ids = list(ex["input_ids"])
        row_labels = list(ex.get("labels", row_ids))
        start = 0
        for n in _row_lengths(ex):
            ids += row_ids[start : start + n]
            labels += [IGNORE, *row_labels[start + 1 : start + n]]
            positions += range(n)
            lengths.append(n)
            start += n
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lengths": lengths}


def pad(examples: Sequence[Mapping[str, Any]], pad_token_id: int) -> dict[str, list[list[int]]]:
    """Rows right-padded to the longest (pure): ``attention_mask`` 0 and label -100 on pads."""
    width = max(len(ex["input_ids"]) for ex in examples)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "attention_mask": []}
    for ex in examples:
        row = list(ex["input_ids"])
        gap = width - len(row)
        out["input_ids"].append(row + [pad_token_id] * gap)
        out["labels"].append(list(ex.get("labels", row)) + [IGNORE] * gap)
        out["attention_mask"].append([1] * len(row) + [0] * gap)
    return out


@dataclass(frozen=True)
class Collator:
    """The trainer's data collator (see the module docstring).

    ``isolate``: flatten the micro-batch into one row with sample boundaries (packing on);
    otherwise pad. ``lengths_key``: also emit ``packed_seq_lengths`` (what Unsloth's attention
    reads the boundaries from; transformers reads them from ``position_ids``).
    """

    pad_token_id: int
    isolate: bool
    lengths_key: bool = False

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not self.isolate:
            padded = pad(examples, self.pad_token_id)
            return {k: torch.tensor(v, dtype=torch.long) for k, v in padded.items()}
        flat = flatten(examples)
        batch: dict[str, Any] = {
            k: torch.tensor([flat[k]], dtype=torch.long)
            for k in ("input_ids", "labels", "position_ids")
        }
        if self.lengths_key:
            batch["packed_seq_lengths"] = torch.tensor(flat["seq_lengths"], dtype=torch.int32)
        return batch

"""Cluster-side planning: how much memory one GPU has, and what to change after a CUDA OOM.

The memory planner proper (parameters x method x sequence length → micro-batch, strategy, fit)
runs in the trainer's prepare stage, which can read the model's config; this module only knows
what the cluster knows. Pure functions over plain dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB per GPU, set by gpu-feature-discovery


def _labels_match(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def gpu_memory_mib(
    nodes: list[dict[str, Any]], gpus: int, node_selector: dict[str, str], hint: int | None
) -> int | None:
    """Memory of one GPU for this job: the spec's hint, else the largest labelled node that has
    enough GPUs and matches the node selector, else None (the prepare stage then plans without a
    limit and says so)."""
    if hint is not None:
        return hint
    if gpus <= 0:
        return None
    best: int | None = None
    for node in nodes:
        meta = node.get("metadata") or {}
        labels: dict[str, str] = meta.get("labels") or {}
        if not _labels_match(labels, node_selector):
            continue
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        try:
            count = int(str(allocatable.get(GPU_RESOURCE, "0")))
            memory = int(labels[GPU_MEMORY_LABEL])
        except (KeyError, ValueError):
            continue
        if count >= gpus and (best is None or memory > best):
            best = memory
    return best


@dataclass(frozen=True)
class BatchPlan:
    """Micro-batch and accumulation that together give the effective batch size."""

    micro_batch_size: int
    gradient_accumulation: int


def accumulation_for(batch_size: int, micro_batch_size: int, processes: int) -> int:
    """Accumulation steps so that micro x accumulation x processes covers the batch."""
    return max(1, math.ceil(batch_size / (micro_batch_size * max(1, processes))))


def after_cuda_oom(batch_size: int, micro_batch_size: int, processes: int) -> BatchPlan | None:
    """Halve the micro-batch and double the accumulation, keeping the effective batch size.

    None when the micro-batch is already 1: nothing left to halve, the OOM is final.
    """
    if micro_batch_size <= 1:
        return None
    micro = micro_batch_size // 2
    return BatchPlan(micro, accumulation_for(batch_size, micro, processes))

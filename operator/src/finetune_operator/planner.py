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


# Bytes one checkpoint (or the final output) holds per model parameter, on the high side:
# full fine-tuning saves the weights (bf16, 2 B) and Adam's two fp32 moments (8 B) plus slack;
# LoRA saves only the adapter and its optimizer state (trainable parameters are well under 5 %
# of the model at usual ranks: 12 B x 5 % = 0.6 B). Merged weights are the model in bf16.
CHECKPOINT_BYTES_PER_PARAMETER = {"full": 14.0, "lora": 0.6, "qlora": 0.6}
MERGED_BYTES_PER_PARAMETER = 2.0
# One optimizer step when nothing was measured yet (a first step may also compile kernels).
DEFAULT_STEP_SECONDS = 120.0
# What a pod without a model size gets (the prepare pod has nothing to save: it exits at once).
UNKNOWN_MODEL_GRACE_SECONDS = 300
MAX_GRACE_SECONDS = 6 * 3600


def save_bytes(parameters: int, method: str, merge: bool) -> float:
    """The larger of one checkpoint and the final output, in bytes."""
    checkpoint = parameters * CHECKPOINT_BYTES_PER_PARAMETER.get(method, 14.0)
    final = parameters * MERGED_BYTES_PER_PARAMETER if merge or method == "full" else 0.0
    return max(checkpoint, final)


def grace_seconds(
    *,
    parameters: int | None,
    method: str,
    merge: bool,
    step_seconds: float | None,
    write_mib_per_second: float,
    margin_seconds: int,
) -> int:
    """terminationGracePeriodSeconds of a training pod: one step (measured when the job has
    reported progress, else a conservative default) + one save of the model's size at a
    conservative write bandwidth + a margin. Unknown model size: the old fixed default."""
    if not parameters:
        return UNKNOWN_MODEL_GRACE_SECONDS
    write = save_bytes(parameters, method, merge) / (write_mib_per_second * 2**20)
    step = step_seconds if step_seconds is not None else DEFAULT_STEP_SECONDS
    return min(math.ceil(step + write + margin_seconds), MAX_GRACE_SECONDS)


def step_seconds(step: int | None, total: int | None, eta_seconds: int | None) -> float | None:
    """Seconds per step from a progress report (ETA over the steps left), None when unknown."""
    if step is None or total is None or eta_seconds is None or total <= step:
        return None
    return eta_seconds / (total - step)

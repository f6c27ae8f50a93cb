"""Memory planner: will this job fit the GPUs, and with which micro-batch and strategy? (pure)

Inputs are plain values (the model's config.json, the method, the batch, the GPUs); the output is a
``Plan``. No I/O, no torch. The estimate per GPU is

    CUDA context
  + weights            (bf16, or 4-bit NF4 linears + bf16 embeddings for qlora)
  + trainable state    (full: bf16 grads + Adam m/v in bf16; LoRA: fp32 A/B + grads + Adam)
  + activations        tokens per micro-batch x bytes per token (checkpointed layer inputs, one
                       layer's working set during recomputation, logits), plus the loss's
                       working buffers, which scale with the output head (vocab x hidden);
                       for full fine-tuning the optimizer step's workspace instead when larger
                       (the two are never alive together)
  + DDP                (NCCL buffers and gradient buckets, per process)

with every calibration number in ``CONSTANTS``. Calibrated against our trainer's training peaks
on H100 with the unsloth backend (torch reserved + the CUDA context; 1B and 7B x LoRA/QLoRA x
seq 512/2048 x micro-batch 1/4, 1B full, single GPU and DDP): every row within ±15 %. The table
is in docs/benchmarks.md ("Memory planner accuracy", written by bench/planner_table.py) and
tests/trainer/test_planner.py checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MiB = 1024 * 1024
GiB = 1024 * MiB

Strategy = Literal["single", "ddp", "model-split"]
# "unsloth" is the trainer's default (eager decoder blocks); "unsloth-compiled" is Unsloth with
# its per-block torch.compile (UNSLOTH_BLOCK_COMPILE=1), which holds more at the peak
PlanBackend = Literal["unsloth", "unsloth-compiled", "transformers"]

DEFAULT_TARGET_MODULES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class Constants:
    """Calibration numbers, all in one place (bytes unless named otherwise)."""

    cuda_context_mib: int = 800  # whole-card minus torch-reserved at 7B QLoRA (6.0 - 5.2 GiB)
    ddp_overhead_mib: int = 1024  # NCCL communicator + buffers per process (measured ~1 GiB)
    safety_fraction: float = 0.10  # keep 10 % of the card free (fragmentation, spikes)
    bf16_bytes: float = 2.0
    nf4_bytes: float = 0.53  # 4 bits + per-block absmax (double-quantised) constants
    # Full fine-tuning trains the bf16 weights in place (no fp32 master copy) and torch's AdamW
    # keeps m and v in the parameters' dtype: bf16 grad 2 + Adam m, v 4 (weights counted apart).
    full_state_bytes: float = 6.0
    # The foreach AdamW step holds one more bf16 copy of the parameters while it runs; measured
    # on 1B full (peak flat at 11.6 GiB over seq 512/2048 x micro-batch 1/4: the step, not the
    # activations, sets the peak).
    full_step_workspace_bytes: float = 2.0
    lora_state_bytes: float = 16.0  # fp32 weight 4 + grad 4 + Adam m, v 8
    ckpt_bytes_per_hidden: float = 2.0  # the bf16 layer input kept per layer under checkpointing
    # one layer's working set (4 x hidden + 3 x intermediate bf16 values per token), scaled:
    layer_factor: Mapping[str, float] = field(
        default_factory=lambda: {"unsloth": 0.4, "unsloth-compiled": 0.2, "transformers": 6.6}
    )
    no_ckpt_layer_factor: float = 1.0  # without checkpointing every layer keeps its working set
    # logits bytes per vocabulary entry per token (unsloth chunks the cross-entropy):
    # (eager unsloth: nothing measurable beyond the head workspace below)
    logit_bytes: Mapping[str, float] = field(
        default_factory=lambda: {"unsloth": 0.0, "unsloth-compiled": 0.625, "transformers": 12.0}
    )
    # Working buffers that scale with the output head (vocab x hidden elements), whatever the
    # batch: the chunked cross-entropy's copies of the head and its gradient path. This is what
    # separates a 1B model with a 128k vocabulary (tied embeddings) from a 7B one with 32k; fitted
    # to the H100 runs (bench/gpu/results/2026-11-26-*.jsonl, see bench/planner_table.py): "unsloth"
    # on the default (block compile off) matrix, "unsloth-compiled" on the compiled one.
    head_workspace_bytes: Mapping[str, float] = field(
        default_factory=lambda: {"unsloth": 2.5, "unsloth-compiled": 3.0, "transformers": 0.0}
    )
    split_imbalance: float = 0.15  # a layer-wise split is never perfectly even
    default_micro_batch_cap: int = 8  # when the GPU memory is unknown (or on CPU)
    min_seq_length_suggestion: int = 256


CONSTANTS = Constants()


@dataclass(frozen=True)
class Geometry:
    """What the planner needs from a model's config.json."""

    model_type: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool
    qkv_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Geometry:
        """Read a transformers config.json (nested ``text_config`` of multimodal models too)."""
        cfg = config.get("text_config") or config
        model_type = str(config.get("model_type", cfg.get("model_type", "llama")))
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            geometry = cls(
                model_type=model_type,
                hidden=hidden,
                layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg["intermediate_size"]),
                vocab=int(cfg["vocab_size"]),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                tied_embeddings=bool(
                    cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
                ),
                qkv_bias=bool(cfg.get("attention_bias", model_type.startswith("qwen2"))),
                qk_norm=model_type.startswith("qwen3"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"config.json lacks a usable {exc} for the memory planner") from exc
        return geometry

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one decoder layer."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def linear_parameters(self) -> int:
        """Parameters in the decoder layers' projections (what 4-bit quantisation shrinks)."""
        per_layer = sum(i * o for i, o in self.linear_shapes().values())
        return self.layers * per_layer

    def embedding_parameters(self) -> int:
        """Input embedding plus the output head when it is not tied."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def parameters(self) -> int:
        """Total parameter count (matches ``model.num_parameters()`` for llama-like models)."""
        per_layer_extra = 2 * self.hidden  # two RMSNorms
        if self.qkv_bias:
            per_layer_extra += (self.heads + 2 * self.kv_heads) * self.head_dim
        if self.qk_norm:
            per_layer_extra += 2 * self.head_dim
        return (
            self.linear_parameters()
            + self.layers * per_layer_extra
            + self.embedding_parameters()
            + self.hidden  # final norm
        )

    def lora_parameters(self, r: int, target_modules: tuple[str, ...]) -> int:
        """Trainable LoRA parameters: r x (in + out) per adapted projection per layer."""
        shapes = self.linear_shapes()
        per_layer = 0
        for name in target_modules:
            # unknown names (custom modules) are costed like a square hidden x hidden projection
            i, o = shapes.get(name.rsplit(".", 1)[-1], (self.hidden, self.hidden))
            per_layer += r * (i + o)
        return self.layers * per_layer


@dataclass(frozen=True)
class PlanRequest:
    """Everything the planner decides from."""

    geometry: Geometry
    method: Literal["lora", "qlora", "full"]
    batch_size: int
    max_seq_length: int
    gpus: int
    gpu_memory_mib: int | None
    lora_r: int = 16
    target_modules: tuple[str, ...] | None = None
    micro_batch_size: int | None = None
    gradient_accumulation: int | None = None
    gradient_checkpointing: bool = True
    backend: PlanBackend = "unsloth"
    nodes: int = 1  # the plan is per node; the batch is divided over every node's processes


@dataclass(frozen=True)
class Estimate:
    """Per-GPU memory breakdown in MiB."""

    context: int
    weights: int
    trainable_state: int
    activations: int
    ddp: int

    @property
    def total(self) -> int:
        return self.context + self.weights + self.trainable_state + self.activations + self.ddp


@dataclass(frozen=True)
class Plan:
    """The planner's verdict (the ``plan`` object of prepare.json)."""

    fits: bool
    strategy: Strategy
    processes: int
    micro_batch_size: int
    gradient_accumulation: int
    estimated_gpu_memory_mib: int
    gpu_memory_mib: int | None
    parameters: int
    trainable_parameters: int
    message: str
    breakdown_mib: dict[str, int]
    suggestion: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mib(n_bytes: float) -> int:
    return int(-(-n_bytes // MiB))  # ceil


def trainable_parameters(req: PlanRequest) -> int:
    if req.method == "full":
        return req.geometry.parameters()
    targets = req.target_modules or DEFAULT_TARGET_MODULES
    return req.geometry.lora_parameters(req.lora_r, tuple(targets))


def activation_bytes_per_token(req: PlanRequest, c: Constants = CONSTANTS) -> float:
    g = req.geometry
    working_set = (4 * g.hidden + 3 * g.intermediate) * c.bf16_bytes
    logits = g.vocab * c.logit_bytes[req.backend]
    if req.gradient_checkpointing:
        kept = g.layers * g.hidden * c.ckpt_bytes_per_hidden
        return kept + working_set * c.layer_factor[req.backend] + logits
    layer_factor = max(c.no_ckpt_layer_factor, c.layer_factor[req.backend])
    return g.layers * working_set * layer_factor + logits


def estimate(
    req: PlanRequest,
    micro_batch: int,
    *,
    split: int = 1,
    ddp: bool = False,
    c: Constants = CONSTANTS,
) -> Estimate:
    """Per-GPU memory for one micro-batch of full-length sequences.

    ``split`` > 1 spreads the model's layers over that many GPUs (weights, state and activations
    divided, plus an imbalance allowance).
    """
    g = req.geometry
    params = g.parameters()
    if req.method == "qlora":
        quantised = g.linear_parameters()
        weights = quantised * c.nf4_bytes + (params - quantised) * c.bf16_bytes
    else:
        weights = params * c.bf16_bytes
    trainable = trainable_parameters(req)
    state = trainable * (c.full_state_bytes if req.method == "full" else c.lora_state_bytes)
    head = g.vocab * g.hidden * c.head_workspace_bytes[req.backend]
    activations = micro_batch * req.max_seq_length * activation_bytes_per_token(req, c) + head
    if req.method == "full":
        activations = max(activations, trainable * c.full_step_workspace_bytes)
    ddp_bytes = 0.0
    if ddp:
        grad_bytes = c.bf16_bytes if req.method == "full" else 4.0
        ddp_bytes = c.ddp_overhead_mib * MiB + trainable * grad_bytes  # + gradient buckets
    share = 1.0
    if split > 1:
        share = (1.0 + c.split_imbalance) / split
    return Estimate(
        context=c.cuda_context_mib,
        weights=_mib(weights * share),
        trainable_state=_mib(state * share),
        activations=_mib(activations * share),
        ddp=_mib(ddp_bytes),
    )


def _powers_of_two_dividing(n: int) -> list[int]:
    """Powers of two that divide n, largest first."""
    out = []
    p = 1
    while p <= n:
        if n % p == 0:
            out.append(p)
        p *= 2
    return sorted(out, reverse=True)


def usable_mib(gpu_memory_mib: int, c: Constants = CONSTANTS) -> int:
    return int(gpu_memory_mib * (1.0 - c.safety_fraction))


@dataclass(frozen=True)
class _Choice:
    strategy: Strategy
    processes: int
    micro: int
    estimate: Estimate


def _choose(req: PlanRequest, c: Constants) -> tuple[_Choice | None, _Choice, str | None]:
    """(fitting choice or None, the smallest choice tried, a batch-shape error or None)."""
    gpus = max(req.gpus, 1)
    layouts: list[tuple[Strategy, int, int]] = []  # strategy, processes, split
    if gpus == 1:
        layouts.append(("single", 1, 1))
    else:
        layouts.append(("ddp", gpus, 1))
        layouts.append(("model-split", 1, gpus))
    smallest: _Choice | None = None
    for strategy, processes, split in layouts:
        world = processes * req.nodes
        if req.batch_size % world:
            nodes = f" on each of {req.nodes} nodes" if req.nodes > 1 else ""
            shape_error = (
                f"batchSize {req.batch_size} is not divisible by the {processes} processes{nodes}"
            )
            if strategy == "ddp":
                continue
            return None, _Choice(strategy, processes, 1, estimate(req, 1, split=split)), shape_error
        per_process = req.batch_size // world
        if req.micro_batch_size is not None:
            if per_process % req.micro_batch_size:
                return (
                    None,
                    _Choice(strategy, processes, req.micro_batch_size, estimate(req, 1)),
                    f"microBatchSize {req.micro_batch_size} does not divide the per-process "
                    f"batch {per_process} (batchSize {req.batch_size} / {world} processes)",
                )
            candidates = [req.micro_batch_size]
        else:
            candidates = _powers_of_two_dividing(per_process)
            if req.gpu_memory_mib is None:
                candidates = [m for m in candidates if m <= c.default_micro_batch_cap] or [1]
        for micro in candidates:
            est = estimate(req, micro, split=split, ddp=strategy == "ddp", c=c)
            choice = _Choice(strategy, processes, micro, est)
            if req.gpu_memory_mib is None or est.total <= usable_mib(req.gpu_memory_mib, c):
                return choice, choice, None
            if smallest is None or est.total < smallest.estimate.total:
                smallest = choice
    assert smallest is not None
    return None, smallest, None


def _method_name(method: str) -> str:
    return {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA (4-bit)"}[method]


def _suggest(req: PlanRequest, c: Constants) -> str:
    """The cheapest change that makes the job fit."""
    table: dict[str, list[Literal["lora", "qlora", "full"]]] = {
        "full": ["lora", "qlora"],
        "lora": ["qlora"],
        "qlora": [],
    }
    alternatives = table[req.method]
    for method in alternatives:
        alt = _replace(req, method=method, micro_batch_size=None, gradient_accumulation=None)
        fit, _, _ = _choose(alt, c)
        if fit is not None:
            return f"use {method} (estimated {fit.estimate.total:,} MiB per GPU)"
    seq = req.max_seq_length // 2
    while seq >= c.min_seq_length_suggestion:
        alt = _replace(req, max_seq_length=seq, micro_batch_size=None, gradient_accumulation=None)
        fit, _, _ = _choose(alt, c)
        if fit is not None:
            return f"lower maxSeqLength to {seq} (estimated {fit.estimate.total:,} MiB per GPU)"
        seq //= 2
    if req.method != "qlora":
        return "use qlora and more or larger GPUs"
    return "use more or larger GPUs"


def _replace(req: PlanRequest, **changes: Any) -> PlanRequest:
    values = {k: getattr(req, k) for k in req.__dataclass_fields__}
    values.update(changes)
    return PlanRequest(**values)


def plan(req: PlanRequest, c: Constants = CONSTANTS) -> Plan:
    """Choose strategy, micro-batch and accumulation, or explain why the job cannot fit."""
    params = req.geometry.parameters()
    trainable = trainable_parameters(req)
    fit, smallest, shape_error = _choose(req, c)
    chosen = fit or smallest
    est = chosen.estimate
    breakdown = {
        "context": est.context,
        "weights": est.weights,
        "trainable_state": est.trainable_state,
        "activations": est.activations,
        "ddp": est.ddp,
    }
    per_process = req.batch_size // (chosen.processes * req.nodes)
    accumulation = max(per_process // chosen.micro, 1)
    what = (
        f"{_method_name(req.method)} of {params / 1e9:.2f}B parameters, "
        f"maxSeqLength {req.max_seq_length}, microBatchSize {chosen.micro}"
    )
    if (
        shape_error is None
        and req.gradient_accumulation is not None
        and fit is not None
        and chosen.micro * req.gradient_accumulation * chosen.processes * req.nodes
        != req.batch_size
    ):
        shape_error = (
            f"microBatchSize {chosen.micro} x gradientAccumulation "
            f"{req.gradient_accumulation} x {chosen.processes * req.nodes} processes != "
            f"batchSize {req.batch_size}"
        )

    def result(fits: bool, message: str, suggestion: str | None) -> Plan:
        return Plan(
            fits,
            chosen.strategy,
            chosen.processes,
            chosen.micro,
            accumulation,
            est.total,
            req.gpu_memory_mib,
            params,
            trainable,
            message,
            breakdown,
            suggestion,
        )

    if shape_error is not None:
        return result(
            False, shape_error, "make batchSize = microBatchSize x gradientAccumulation x processes"
        )
    if fit is None:
        assert req.gpu_memory_mib is not None
        suggestion = _suggest(req, c)
        gpus = f"{req.gpus} GPUs of " if req.gpus > 1 else "a GPU with "
        allow = "allow" if req.gpus > 1 else "allows"
        message = (
            f"does not fit: {what} needs an estimated {est.total:,} MiB per GPU "
            f"({chosen.strategy}), but {gpus}{req.gpu_memory_mib:,} MiB {allow} "
            f"{usable_mib(req.gpu_memory_mib, c):,} MiB ({c.safety_fraction:.0%} kept free); "
            f"{suggestion}"
        )
        return result(False, message, suggestion)
    if req.gpus == 0:
        message = f"CPU run: {what}; GPU memory not planned"
    elif req.gpu_memory_mib is None:
        message = f"{what}: estimated {est.total:,} MiB per GPU; GPU memory unknown, not checked"
    else:
        message = (
            f"fits: {what}, {chosen.strategy} on {max(req.gpus, 1)} GPU(s), estimated "
            f"{est.total:,} of {req.gpu_memory_mib:,} MiB per GPU"
        )
    return result(True, message, None)


def total_steps(
    rows: int,
    *,
    micro_batch_size: int,
    gradient_accumulation: int,
    processes: int,
    epochs: float,
    max_steps: int | None,
) -> int:
    """Optimizer steps the HF Trainer will run (mirrors its arithmetic in ``_inner_training_loop``).

    Each process's dataloader yields ceil(rows / processes / micro) batches (the distributed
    sampler pads to equal shards); an epoch is ceil(batches / accumulation) updates (the last,
    partial accumulation window still steps); fractional epochs round the total up.
    """
    if max_steps is not None:
        return max_steps
    import math

    per_process_rows = math.ceil(rows / processes)
    batches = math.ceil(per_process_rows / micro_batch_size)
    updates_per_epoch = max(math.ceil(batches / gradient_accumulation), 1)
    return max(math.ceil(epochs * updates_per_epoch), 1)

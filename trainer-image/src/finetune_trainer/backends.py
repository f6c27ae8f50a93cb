"""Model loading backends: unsloth on CUDA, transformers + PEFT elsewhere.

The ONLY module that imports unsloth. ``resolve`` decides the backend (``auto`` = unsloth when CUDA
and unsloth are present), ``load`` returns a ready-to-train model (LoRA-wrapped for lora/qlora) and
its tokenizer. Both backends feed the same TRL training loop in train.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from finetune_trainer import hubcache, netfaults
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import ConfigError, ModelNotFoundError
from finetune_trainer.planner import DEFAULT_TARGET_MODULES

log = logging.getLogger(__name__)

BackendName = Literal["unsloth", "transformers"]
DType = Literal["bf16", "fp16", "fp32"]

# Default LoRA targets per architecture (config.json model_type): all attention and MLP projections.
TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": DEFAULT_TARGET_MODULES,
    "mistral": DEFAULT_TARGET_MODULES,
    "qwen2": DEFAULT_TARGET_MODULES,
    "qwen3": DEFAULT_TARGET_MODULES,
    "gemma": DEFAULT_TARGET_MODULES,
    "gemma2": DEFAULT_TARGET_MODULES,
    "gemma3_text": DEFAULT_TARGET_MODULES,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}


@dataclass(frozen=True)
class Device:
    """What this process runs on."""

    cuda: bool
    bf16: bool
    local_rank: int
    world_size: int


def detect_device() -> Device:
    import torch

    cuda = torch.cuda.is_available()
    return Device(
        cuda=cuda,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def cap_memory(device: Device, gpu_memory_mib: int | None) -> float | None:
    """Hold this process to the GPU memory the plan was made for, when the card has more.

    A plan for a 12 GiB RTX 3060 then behaves the same on a 80 GiB card: it fits or fails there
    exactly as it would on the small one (``torch.cuda.set_per_process_memory_fraction``).
    Returns the fraction applied, or None.
    """
    if not device.cuda or not gpu_memory_mib:
        return None
    import torch

    total = torch.cuda.get_device_properties(device.local_rank).total_memory
    fraction = gpu_memory_mib * 2**20 / total
    if fraction >= 1.0:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, device.local_rank)
    return fraction


def unsloth_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


# Unsloth before unslothai/unsloth#4143 (March 2026) patched accelerate to DistributedType.NO
# whenever one GPU was visible, ignoring WORLD_SIZE: multi-node with one GPU per node then
# trained each node alone. 2026.10.9 (requirements/trainer.txt) guards it with WORLD_SIZE <= 1.
_UNGUARDED_SINGLE_GPU_PATCH = re.compile(r"^if DEVICE_COUNT == 1:\s*$", re.MULTILINE)


def unsloth_runs_distributed(utils_source: str) -> bool:
    """Whether an Unsloth (its ``unsloth/models/_utils.py`` text) keeps torch.distributed on
    when a rank sees one GPU and WORLD_SIZE > 1."""
    return _UNGUARDED_SINGLE_GPU_PATCH.search(utils_source) is None


def _installed_unsloth_runs_distributed() -> bool:
    spec = importlib.util.find_spec("unsloth")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "_utils.py"
    try:
        return unsloth_runs_distributed(path.read_text(encoding="utf-8"))
    except OSError:
        return False


def resolve(config: TrainerConfig, device: Device) -> BackendName:
    """The backend to use, or a ``ConfigError`` (exit 2) for an impossible combination."""
    distributed = device.world_size > 1
    if config.backend == "unsloth":
        if not device.cuda:
            raise ConfigError("backend unsloth needs an NVIDIA GPU (CUDA), and none is visible")
        if not unsloth_available():
            raise ConfigError(
                "backend unsloth was asked for but unsloth is not installed in the image"
            )
        if distributed and not _installed_unsloth_runs_distributed():
            raise ConfigError(
                "backend unsloth: the installed Unsloth turns torch.distributed off when a rank "
                "sees one GPU (unslothai/unsloth#4142); use backend transformers or a newer image"
            )
        return "unsloth"
    if config.backend == "auto" and device.cuda and unsloth_available():
        if not distributed or _installed_unsloth_runs_distributed():
            return "unsloth"
        log.warning(
            "backend auto: transformers instead of unsloth, whose installed version turns "
            "torch.distributed off when a rank sees one GPU (unslothai/unsloth#4142)"
        )
        return "transformers"
    if config.method == "qlora" and not device.cuda:
        raise ConfigError(
            "method qlora needs an NVIDIA GPU (bitsandbytes 4-bit); use lora or full on CPU"
        )
    return "transformers"


def resolve_dtype(config: TrainerConfig, device: Device) -> DType:
    """auto: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    p = config.training.precision
    if p != "auto":
        if p in ("bf16", "fp16") and not device.cuda:
            raise ConfigError(f"precision {p} needs a GPU; use auto or fp32 on CPU")
        return p
    if not device.cuda:
        return "fp32"
    return "bf16" if device.bf16 else "fp16"


def torch_dtype(dtype: DType) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def target_modules(config: TrainerConfig, model_type: str) -> list[str]:
    if config.lora.target_modules:
        return list(config.lora.target_modules)
    return list(TARGET_MODULES.get(model_type, DEFAULT_TARGET_MODULES))


def early_import(backend: BackendName) -> None:
    """unsloth patches transformers/TRL at import, so it must come first."""
    if backend == "unsloth":
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        # Unsloth's per-block torch.compile is off unless the pod's env turns it on
        # (UNSLOTH_BLOCK_COMPILE=1 in spec.podTemplate.env). Measured on H100: it is 2 % faster
        # but holds 0.4-0.8 GiB more at the peak and adds ~20 s of compiling to the first step
        # of every new pod (docs/benchmarks.md); on 12 GiB cards memory and resume time matter more.
        os.environ.setdefault("UNSLOTH_BLOCK_COMPILE", "0")
        import unsloth  # noqa: F401


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    backend: BackendName
    dtype: DType
    model_type: str


def hub_kwargs(config: TrainerConfig, token: str | None) -> dict[str, Any]:
    cache_dir, revision = hubcache.hub_source(config)
    return {
        "revision": revision,
        "token": token,
        "cache_dir": cache_dir,
        "trust_remote_code": config.model.trust_remote_code,
    }


def load(
    config: TrainerConfig, backend: BackendName, device: Device, token: str | None, strategy: str
) -> Loaded:
    """Load the model for training (weights, quantisation, LoRA wrapping)."""
    dtype = resolve_dtype(config, device)
    if config.model.path is not None and not Path(config.model.path).is_dir():
        raise ModelNotFoundError(f"model directory {config.model.path} does not exist")
    try:
        if backend == "unsloth":
            return _load_unsloth(config, device, dtype, token, strategy)
        return _load_transformers(config, device, dtype, token, strategy)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # transformers raises OSError for a missing repo/revision/file and ValueError for an
        # unknown architecture: both mean the model cannot be used as given, unless the cause
        # is the network (SourceUnavailable, retried) or a full disk
        raise netfaults.hub_failure(exc, f"cannot load model {config.model.source}") from exc


def _device_map(device: Device, strategy: str) -> Any:
    if not device.cuda:
        return None
    if strategy == "model-split":
        return "balanced"
    return {"": device.local_rank}


def compile_cache_dir(config: TrainerConfig) -> Path:
    """Where torch.compile keeps its kernels for this job: on the work volume, not the container's
    /tmp, so a resumed or retried attempt reuses what the first one compiled."""
    return Path(config.paths.work) / ".cache" / "torch-compile"


def _keep_compiled_kernels(config: TrainerConfig) -> None:
    # What Unsloth compiles (its kernels; each decoder block when UNSLOTH_BLOCK_COMPILE=1, tens
    # of seconds for a 7B model) is kept for the next attempt. Unsloth drops
    # TORCHINDUCTOR_CACHE_DIR when imported, so this is set after the import; inductor reads it
    # when it compiles.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir(config))


def _load_unsloth(
    config: TrainerConfig, device: Device, dtype: DType, token: str | None, strategy: str
) -> Loaded:
    from unsloth import FastLanguageModel

    _keep_compiled_kernels(config)

    kwargs = hub_kwargs(config, token)
    kwargs.pop("cache_dir")  # unsloth reads the cache location from HF_HUB_CACHE (set in train.py)
    if strategy == "model-split":
        kwargs["device_map"] = "balanced"
    # single / ddp: unsloth's default placement puts each rank's model on its own GPU
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=config.model.source,
        max_seq_length=config.training.max_seq_length,
        load_in_4bit=config.method == "qlora",
        dtype=None if config.training.precision == "auto" else torch_dtype(dtype),
        full_finetuning=config.method == "full",
        **kwargs,
    )
    model_type = str(getattr(model.config, "model_type", "llama"))
    if config.method != "full":
        model = FastLanguageModel.get_peft_model(
            model,
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=target_modules(config, model_type),
            use_gradient_checkpointing="unsloth"
            if config.training.gradient_checkpointing
            else False,
            random_state=config.training.seed,
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    real_dtype: DType = "bf16" if "bfloat16" in str(model.dtype) else dtype
    return Loaded(model, tokenizer, "unsloth", real_dtype, model_type)


def _load_transformers(
    config: TrainerConfig, device: Device, dtype: DType, token: str | None, strategy: str
) -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = hub_kwargs(config, token)
    tokenizer = AutoTokenizer.from_pretrained(config.model.source, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load_kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), **kwargs}
    device_map = _device_map(device, strategy)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    if config.method == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        bnb_config: Any = BitsAndBytesConfig  # untyped constructor
        load_kwargs["quantization_config"] = bnb_config(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(dtype) if dtype != "fp32" else torch.float32,
        )
    model: Any = AutoModelForCausalLM.from_pretrained(config.model.source, **load_kwargs)
    model_type = str(getattr(model.config, "model_type", "llama"))
    if config.method == "full":
        return Loaded(model, tokenizer, "transformers", dtype, model_type)

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.method == "qlora":
        prepare_kbit: Any = prepare_model_for_kbit_training  # untyped
        model = prepare_kbit(
            model,
            use_gradient_checkpointing=config.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora_kwargs: dict[str, Any] = {"lora_alpha": config.lora.alpha}  # PEFT accepts a float alpha
    lora = LoraConfig(
        r=config.lora.r,
        **lora_kwargs,
        lora_dropout=config.lora.dropout,
        target_modules=target_modules(config, model_type),
        task_type="CAUSAL_LM",
        bias="none",
    )
    import torch

    # LoRA init draws random numbers: seed it so every rank and every run starts identical
    torch.manual_seed(config.training.seed)
    model = get_peft_model(model, lora)
    return Loaded(model, tokenizer, "transformers", dtype, model_type)


def save_merged(loaded: Loaded, model: Any, out_dir: Path) -> None:
    """Write merged 16-bit weights (lora/qlora) + tokenizer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if loaded.backend == "unsloth":
        model.save_pretrained_merged(str(out_dir), loaded.tokenizer, save_method="merged_16bit")
        return
    if loaded.dtype != "fp32" and any(
        "4bit" in type(m).__name__ for m in model.modules()
    ):  # a 4-bit base cannot be merged in place: dequantise via a fresh 16-bit load
        raise ConfigError("merging a qlora adapter needs the unsloth backend (merged_16bit)")
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir))
    loaded.tokenizer.save_pretrained(str(out_dir))

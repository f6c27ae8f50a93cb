"""The trainer config: the contract with the operator (docs/contract.md, section 1).

The operator renders this JSON into the ``<job>-config`` ConfigMap; the trainer validates it with
this model. snake_case keys, unknown keys rejected, a version field so either side can refuse a
contract it does not know. A bad config is exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune_trainer.errors import ConfigError
from finetune_trainer.export.spec import ExportSpec
from finetune_trainer.tracking import check_url

CONTRACT_VERSION = 1

DatasetFormat = Literal["alpaca", "sharegpt", "messages", "prompt_completion", "text"]
Method = Literal["lora", "qlora", "full"]
Backend = Literal["auto", "unsloth", "transformers"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobRef(_Strict):
    """Identity of the FineTuneJob this config belongs to."""

    name: str = Field(description="FineTuneJob name.")
    namespace: str = Field(default="default", description="FineTuneJob namespace.")
    uid: str | None = Field(default=None, description="FineTuneJob UID.")
    attempt: int = Field(default=1, ge=1, description="Attempt number of this training pod.")


class ModelSpec(_Strict):
    """The base model: a hub id (``name``) or a directory inside the pod (``path``)."""

    name: str | None = Field(default=None, description="Hugging Face hub id.")
    path: str | None = Field(default=None, description="Model directory inside the pod.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit).")
    trust_remote_code: bool = Field(default=False, description="Allow custom modelling code.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError("exactly one of model.name / model.path must be set")
        return self

    @property
    def source(self) -> str:
        """The string given to ``from_pretrained`` (path or hub id)."""
        return self.path if self.path is not None else str(self.name)


ChatTemplateName = Literal["chatml", "llama3", "alpaca"]


class ChatTemplateSpec(_Strict):
    """The chat template to train with and save with the adapter (chat_templates.py): exactly one
    of a built-in name, an inline Jinja template, or a file (a mounted ConfigMap key)."""

    name: ChatTemplateName | None = Field(default=None, description="Built-in template.")
    template: str | None = Field(default=None, description="Jinja chat template text.")
    file: str | None = Field(default=None, description="File holding the template.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ChatTemplateSpec:
        if sum(v is not None for v in (self.name, self.template, self.file)) != 1:
            raise ValueError("exactly one of chat_template.name / template / file must be set")
        return self


class DatasetSpec(_Strict):
    """Where the data is and how records are shaped."""

    url: str | None = Field(default=None, description="HTTP(S) URL of a jsonl/json/parquet/csv.")
    path: str | None = Field(default=None, description="File (or directory of files) in the pod.")
    hub: str | None = Field(default=None, description="Hugging Face hub dataset id.")
    split: str = Field(default="train", description="Split to read (hub datasets).")
    format: DatasetFormat = Field(default="alpaca", description="Record format.")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Rename map: canonical field name (e.g. 'instruction') -> column in the data.",
    )
    validation_split: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Fraction of records held out for evaluation."
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 (hex) of the file at url; a mismatch is BadData.",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest download accepted from url; null = the trainer's default (10 GiB).",
    )
    chat_template: ChatTemplateSpec | None = Field(
        default=None,
        description="Template for alpaca/sharegpt/messages; null = the model's own (alpaca: the "
        "built-in alpaca template).",
    )

    @field_validator("format", mode="before")
    @classmethod
    def _normalise_format(cls, value: object) -> object:
        # "prompt-completion" and "promptCompletion" are accepted spellings of prompt_completion.
        if isinstance(value, str) and value.replace("-", "_").lower() in (
            "prompt_completion",
            "promptcompletion",
        ):
            return "prompt_completion"
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [v for v in (self.url, self.path, self.hub) if v is not None]
        if len(given) != 1:
            raise ValueError("exactly one of dataset.url / dataset.path / dataset.hub must be set")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("dataset.url must start with http:// or https://")
        if self.url is None and (self.sha256 is not None or self.max_bytes is not None):
            raise ValueError("dataset.sha256 / dataset.max_bytes apply to dataset.url only")
        return self


class EvaluationSpec(_Strict):
    """Held-out evaluation and sample generations (spec.evaluation)."""

    dataset: DatasetSpec | None = Field(
        default=None,
        description="A separate evaluation dataset; null = dataset.validation_split of the "
        "training data (or no evaluation when that is 0).",
    )
    every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps; null = at every checkpoint."
    )
    prompts: list[str] = Field(
        default_factory=list, max_length=8, description="Prompts generated from at the end."
    )
    max_new_tokens: int = Field(default=64, ge=1, le=1024, description="Tokens per generation.")


class LoraSpec(_Strict):
    """LoRA hyperparameters (lora and qlora methods)."""

    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(default=32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | None = Field(
        default=None, description="Module names to adapt; null = the architecture's default."
    )


class TrainingSpec(_Strict):
    """Optimisation hyperparameters. ``batch_size`` is the effective (global) batch."""

    epochs: float = Field(default=1.0, gt=0, description="Epochs (ignored when max_steps is set).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps.")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=16, ge=1, description="Effective batch size (all processes).")
    micro_batch_size: int | None = Field(default=None, ge=1, description="Per-process batch.")
    gradient_accumulation: int | None = Field(default=None, ge=1, description="Accumulation.")
    max_seq_length: int = Field(default=2048, ge=8, description="Tokens per sample (truncate).")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0, description="Warm-up fraction.")
    scheduler: str = Field(default="linear", description="transformers lr_scheduler_type.")
    optimizer: str = Field(default="adamw_torch", description="transformers optim name.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Weight decay.")
    seed: int = Field(default=42, description="Seed for init, shuffling and dropout.")
    precision: Precision = Field(default="auto", description="auto: bf16/fp16 on GPU, fp32 on CPU.")
    packing: bool = Field(default=True, description="Padding-free packing of short samples.")
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations.")


class CheckpointSpec(_Strict):
    """Checkpoint cadence and retention."""

    every_steps: int = Field(default=50, ge=1, description="Save every N optimizer steps.")
    keep: int = Field(
        default=3, ge=1, description="Newest complete checkpoints to keep (and the best evaluated)."
    )


class OutputSpec(_Strict):
    """What to write besides the adapter."""

    merge_adapter: bool = Field(default=False, description="Also write merged full weights.")
    export: ExportSpec | None = Field(
        default=None, description="Exports `finetune-trainer export` makes after training."
    )


class MlflowSpec(_Strict):
    """MLflow tracking (credentials come as MLFLOW_TRACKING_* env from a Secret)."""

    tracking_uri: str = Field(description="http(s) URL of the tracking server.")
    experiment: str | None = Field(default=None, description="Experiment; null = job name.")
    credentials: bool = Field(
        default=False, description="A credentials Secret is mapped to env: require it."
    )

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_url(value, "tracking.mlflow.tracking_uri")


class WandbSpec(_Strict):
    """Weights & Biases (the API key comes as WANDB_API_KEY env from a Secret)."""

    project: str = Field(description="W&B project.")
    entity: str | None = Field(default=None, description="W&B entity (team or user).")
    mode: Literal["offline", "online"] = Field(default="offline", description="W&B mode.")
    base_url: str | None = Field(default=None, description="Self-hosted W&B server URL.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, "tracking.wandb.base_url")


class TrackingSpec(_Strict):
    """Experiment tracking (tracking.py)."""

    tensorboard: bool = Field(default=True, description="TensorBoard event files.")
    mlflow: MlflowSpec | None = None
    wandb: WandbSpec | None = None


class PathsSpec(_Strict):
    """Directories inside the pod."""

    work: str = Field(default="/workspace", description="The job's volume.")
    model_cache: str = Field(
        default="/cache", description="The job's own, writable model cache (hub downloads)."
    )
    shared_model_cache: str | None = Field(
        default=None,
        description="A shared model cache mounted read-only (spec.cache.pvc); the model is read "
        "from it when it holds the model's snapshot (hubcache.py).",
    )
    claim: str | None = Field(
        default=None, description="PersistentVolumeClaim holding `work` (named in DiskFull)."
    )


class ProgressSpec(_Strict):
    """Where progress is reported (the ``<job>-progress`` ConfigMap)."""

    config_map: str | None = Field(default=None, description="Progress ConfigMap name.")
    namespace: str | None = Field(default=None, description="Its namespace (default: job's).")
    interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Minimum seconds between PATCHes; the first step, checkpoints, evaluations, "
        "a suspend and the end are reported at once.",
    )
    api_server: str | None = Field(default=None, description="API server URL override.")


class TrainerConfig(_Strict):
    """The whole config (contract version 1)."""

    version: Literal[1] = Field(description="Contract version; this trainer understands 1.")
    job: JobRef
    model: ModelSpec
    dataset: DatasetSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    method: Method = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    backend: Backend = "auto"
    gpus: int = Field(default=0, ge=0, description="Processes to launch; 0 = CPU, one process.")
    nodes: int = Field(
        default=1, ge=1, description="Pods training together (PET_NNODES); gpus is per node."
    )
    gpu_memory_mib: int | None = Field(default=None, ge=1, description="Memory of one GPU.")
    paths: PathsSpec = Field(default_factory=PathsSpec)
    progress: ProgressSpec = Field(default_factory=ProgressSpec)
    hub_token_file: str | None = Field(default=None, description="File holding a hub token.")

    @property
    def work(self) -> Path:
        """The job's work directory."""
        return Path(self.paths.work)


def _first_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_config(data: object) -> TrainerConfig:
    """Validate an already-decoded JSON object."""
    if isinstance(data, dict) and data.get("version") not in (None, CONTRACT_VERSION):
        raise ConfigError(
            f"config version {data.get('version')!r} is not supported "
            f"(this trainer understands version {CONTRACT_VERSION})"
        )
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_first_error(exc)}") from exc


def load_config(path: str | Path) -> TrainerConfig:
    """Read and validate the config file; any problem is a ``ConfigError`` (exit code 2)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config {p} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    return parse_config(data)

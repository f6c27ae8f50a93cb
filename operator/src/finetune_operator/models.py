"""The FineTuneJob API (finetune.dev/v1alpha1) as pydantic models: the single source of truth.

The CRD in ``crds/`` is generated from these classes (``crd.py``): field descriptions become
``kubectl explain`` text, defaults become schema defaults, and the CEL rules attached here with
``_rules(...)`` become ``x-kubernetes-validations``. JSON names are camelCase; Python names are
snake_case. Condition types, reasons and phases are named constants so that handlers, tests, the
Argo CD health script and the docs all spell them the same way.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum, nonmember
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAME = "ftj"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_JOB = f"{GROUP}/job"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_ROLE = f"{GROUP}/role"
# the output PVC outlives its job (no ownerReference): this label names the job that made it
LABEL_JOB_UID = f"{GROUP}/job-uid"
RESTART_ANNOTATION = f"{GROUP}/restart-requested-at"
"""Set (to an RFC 3339 time) by the Argo CD restart action and ``kubectl finetune restart``."""
RESTART_STATUS_FIELD = "lastRestartRequestedAt"
"""``status`` field where the operator records the annotation value it has acted on."""
RETRY_ANNOTATION = f"{GROUP}/retry-requested-at"
"""Set (to an RFC 3339 time) by the Argo CD retry action and ``kubectl finetune retry``: a Failed
job tries again in the same run, from its newest complete checkpoint, with a fresh retry budget."""
RETRY_STATUS_FIELD = "lastRetryRequestedAt"
"""``status`` field where the operator records the retry annotation value it has acted on."""

Quantity = int | str
"""A Kubernetes resource quantity (``2``, ``500m``, ``16Gi``): x-kubernetes-int-or-string."""


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules (rule, message) for ``x-kubernetes-validations`` on the enclosing object."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


_KEY = "^[-._a-zA-Z0-9]+$"  # a ConfigMap/Secret key (also a file name under the mount)
_HUB_ID = "^[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?$"


def _safe(field: str, where: str, pattern: str) -> tuple[str, str]:
    """A CEL rule: ``field`` (optional) matches ``pattern`` and holds no '..' (no path escape)."""
    return (
        f"!has(self.{field}) || (self.{field}.matches('{pattern}') && "
        f"!self.{field}.contains('..'))",
        f"{where} must match {pattern} and must not contain '..' (no absolute or parent paths)",
    )


class _Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


# --------------------------------------------------------------------------------------- phases


class Phase(StrEnum):
    """``status.phase`` values, in lifecycle order."""

    PENDING = "Pending"
    PREPARING = "Preparing"
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    EXPORTING = "Exporting"  # training succeeded; the CPU export pod runs (spec.output.export)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    ALL = nonmember((PENDING, PREPARING, QUEUED, STARTING, RUNNING, SUSPENDING, SUSPENDED,
                     EXPORTING, SUCCEEDED, FAILED))  # fmt: skip
    TERMINAL = nonmember((SUCCEEDED, FAILED))


class ConditionType:
    """``status.conditions[].type`` values (kstatus: Ready, Reconciling, Stalled)."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    PROGRESSING = "Progressing"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    ALL = (READY, RECONCILING, STALLED, PROGRESSING, SUSPENDED, SUCCEEDED, FAILED)


class Reason(StrEnum):
    """Condition / attempt / Event reasons. Failure reasons double as ``status.reason``."""

    # lifecycle (the phase names are reasons too)
    BACKOFF = "BackoffWait"
    RESUMED = "Resumed"
    UNSCHEDULABLE = "Unschedulable"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    PREEMPTED = "Preempted"
    # Kueue (docs/kueue.md): the pod group waits for admission (scheduling gate); Kueue evicted
    # it (an attempt's reason: stopped like a suspend, requeued, no retry counted)
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    WORKLOAD_EVICTED = "WorkloadEvicted"
    POD_DELETED = "PodDeleted"
    RETRYING = "Retrying"
    RESTARTING = "Restarting"  # finetune.dev/restart-requested-at: start over from step 0
    RETRY_REQUESTED = "RetryRequested"  # finetune.dev/retry-requested-at on a Failed job
    RETRY_IGNORED = "RetryIgnored"  # the same annotation on a job that has not failed (an Event)
    PREPARED = "Prepared"  # status.data and status.plan written; the training pod comes next
    MICRO_BATCH_HALVED = "MicroBatchHalved"
    SPEC_EDIT_APPLIED = "SpecEditApplied"  # an edit made while suspended took effect on resume
    CHECKPOINT_SKIPPED = "CheckpointSkipped"  # a damaged checkpoint set aside on resume (Event)
    SPEC_CHANGED = "SpecChangedAfterCompletion"  # a finished job's spec edited (an Event)
    # failures of a pod (docs/contract.md section 4)
    OOM_KILLED = "OOMKilled"
    CUDA_OOM = "CudaOOM"
    EVICTED = "Evicted"
    IMAGE_PULL = "ImagePullError"
    BAD_CONFIG = "BadConfig"
    BAD_DATA = "BadData"
    MODEL_NOT_FOUND = "ModelNotFound"
    PLAN_REFUSED = "PlanRefused"
    DISK_FULL = "DiskFull"  # ENOSPC on the work volume: not retried, the claim must grow first
    SOURCE_UNAVAILABLE = "SourceUnavailable"  # network fault fetching data/model: retried
    DIVERGED = "Diverged"  # the loss became NaN/inf: not retried, the settings must change
    RENDEZVOUS_FAILED = "RendezvousFailed"  # the nodes of an attempt did not meet: retried
    ERROR = "Error"
    EXPORT_FAILED = "ExportFailed"  # the export pod failed; the trained adapter is kept
    # failures found by the operator before any pod runs
    BAD_SPEC = "BadSpec"
    PVC_NOT_FOUND = "PVCNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    # the spec exceeds the admin's allowlists (security.py), or the apiserver forbade creating a
    # child (403: RBAC, PodSecurity)
    NOT_ALLOWED = "NotAllowed"
    NAME_CONFLICT = "NameConflict"  # a child's name is taken by an object this job does not own
    CHILD_RECREATED = "ChildRecreated"  # a deleted child was created again (an Event)
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # spec.activeDeadlineSeconds
    QUEUE_TIMEOUT = "QueueTimeout"  # spec.queueTimeoutSeconds
    STALLED = "Stalled"  # no step for spec.progressDeadlineSeconds while Running: retried

    RETRIABLE = nonmember(
        frozenset(
            {
                OOM_KILLED,
                CUDA_OOM,
                EVICTED,
                ERROR,
                PREEMPTED,
                POD_DELETED,
                SOURCE_UNAVAILABLE,
                RENDEZVOUS_FAILED,
                STALLED,
            }
        )
    )
    NOT_RETRIABLE = nonmember(
        frozenset(
            {
                IMAGE_PULL,
                BAD_CONFIG,
                BAD_DATA,
                MODEL_NOT_FOUND,
                PLAN_REFUSED,
                DISK_FULL,
                DIVERGED,
                BAD_SPEC,
                PVC_NOT_FOUND,
                SECRET_NOT_FOUND,
                CONFIG_MAP_NOT_FOUND,
                NOT_ALLOWED,
                NAME_CONFLICT,
                DEADLINE_EXCEEDED,
                QUEUE_TIMEOUT,
            }
        )
    )


EXIT_CODE_REASONS: dict[int, str] = {
    2: Reason.BAD_CONFIG,
    3: Reason.BAD_DATA,
    4: Reason.MODEL_NOT_FOUND,
    5: Reason.PLAN_REFUSED,
    6: Reason.DISK_FULL,
    7: Reason.SOURCE_UNAVAILABLE,
    8: Reason.DIVERGED,
    9: Reason.EXPORT_FAILED,  # finetune-trainer export: the report names which export failed
    12: Reason.RENDEZVOUS_FAILED,
    10: Reason.PREEMPTED,  # SIGTERM + complete checkpoint; Suspended when we asked for it
    11: Reason.CUDA_OOM,
}

# ----------------------------------------------------------------------------------------- spec

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ModelSource(_Base):
    """The base model: a hub id (``name``) or a directory on a PVC (``pvc`` + ``path``)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "[has(self.name), has(self.pvc)].filter(x, x).size() == 1",
                "model: set exactly one of name (hub id) or pvc (+ path)",
            ),
            ("has(self.pvc) == has(self.path)", "model: pvc and path go together"),
            _safe("name", "model.name", _HUB_ID),
            (
                "!has(self.revision) || (!self.revision.startsWith('/') && "
                "!self.revision.contains('..'))",
                "model.revision must not start with '/' or contain '..'",
            ),
            (
                "!has(self.path) || (!self.path.startsWith('/') && !self.path.contains('..'))",
                "model.path must be relative to the PVC and must not contain '..'",
            ),
        )
    )

    name: str | None = Field(
        default=None,
        max_length=256,
        description="Hugging Face hub id, e.g. mistralai/Mistral-7B-v0.1 (downloaded once into "
        "the model cache).",
    )
    pvc: str | None = Field(
        default=None,
        max_length=253,
        pattern=_NAME,
        description="Name of a PersistentVolumeClaim in the job's namespace holding the model; "
        "mounted read-only at /models.",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="Directory of the model inside the PVC (relative), e.g. mistral-7b.",
    )
    revision: str | None = Field(
        default=None, max_length=256, description="Hub revision: branch, tag or commit."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model's own Python code from the hub (off: only code shipped with "
        "transformers runs).",
    )


class ConfigMapKeyRef(_Base):
    """A key of a ConfigMap in the job's namespace."""

    model_config = ConfigDict(json_schema_extra=_rules(_safe("key", "dataset.configMap.key", _KEY)))

    name: str = Field(max_length=253, pattern=_NAME, description="ConfigMap name.")
    key: str = Field(
        default="train.jsonl", max_length=253, description="Key holding the data file."
    )


DatasetFormat = Literal["alpaca", "sharegpt", "messages", "prompt-completion", "text"]
ChatTemplateName = Literal["chatml", "llama3", "alpaca"]


class ChatTemplateConfigMapRef(ConfigMapKeyRef):
    """A ConfigMap key holding a Jinja chat template."""

    model_config = ConfigDict(
        json_schema_extra=_rules(_safe("key", "dataset.chatTemplate.configMap.key", _KEY))
    )

    key: str = Field(
        default="chat_template.jinja", max_length=253, description="Key holding the template."
    )


class ChatTemplate(_Base):
    """The chat template to train with; saved with the adapter (chat_template.jinja), so
    inference with apply_chat_template renders exactly the training prompts."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "[has(self.name), has(self.template), has(self.configMap)]"
                ".filter(x, x).size() == 1",
                "dataset.chatTemplate: set exactly one of name, template or configMap",
            ),
        )
    )

    name: ChatTemplateName | None = Field(
        default=None,
        description="A built-in template: chatml (<|im_start|>role ... <|im_end|>), llama3 "
        "(<|start_header_id|>role<|end_header_id|> ... <|eot_id|>) or alpaca (### Instruction: "
        "/ ### Response:, the classic Alpaca prompt).",
    )
    template: str | None = Field(
        default=None,
        max_length=65536,
        description="A Jinja chat template (as in tokenizer_config.json), rendered in "
        "transformers' sandbox; one that does not render fails the job with reason BadConfig.",
    )
    config_map: ChatTemplateConfigMapRef | None = Field(
        default=None,
        description="A ConfigMap key holding the template (mounted read-only; its author must "
        "be allowed to get the ConfigMap).",
    )


class DatasetSource(_Base):
    """Where the training data is and how its records are shaped."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "[has(self.url), has(self.pvc), has(self.hub), has(self.configMap)]"
                ".filter(x, x).size() == 1",
                "dataset: set exactly one of url, pvc (+ path), hub or configMap",
            ),
            ("has(self.pvc) == has(self.path)", "dataset: pvc and path go together"),
            _safe("hub", "dataset.hub", _HUB_ID),
            (
                "!has(self.url) || self.url.startsWith('https://') || "
                "self.url.startsWith('http://')",
                "dataset.url must start with http:// or https://",
            ),
            (
                "!has(self.path) || (!self.path.startsWith('/') && !self.path.contains('..'))",
                "dataset.path must be relative to the PVC and must not contain '..'",
            ),
            (
                "has(self.url) || (!has(self.sha256) && !has(self.maxBytes))",
                "dataset.sha256 and dataset.maxBytes apply to dataset.url only",
            ),
            (
                "!has(self.chatTemplate) || self.format in ['alpaca', 'sharegpt', 'messages']",
                "dataset.chatTemplate applies to formats alpaca, sharegpt and messages",
            ),
        )
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        description="HTTP(S) URL of a jsonl, json, parquet or csv file. Downloaded once into the "
        "job's volume and verified (Content-Length, sha256 when given, maxBytes); transient "
        "network faults are retried (reason SourceUnavailable), a 4xx answer, a checksum "
        "mismatch or an oversized file is BadData. Its query string and userinfo are never "
        "shown in logs, status or Events; they stay in this spec and in the job's config "
        "ConfigMap, so a presigned URL is as secret as those are.",
    )
    sha256: str | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the file at url, 64 lowercase hex digits (as sha256sum "
        "prints it). A download that does not match fails the job with reason BadData naming "
        "both hashes. Also makes the download cache content-addressed, so a new presigned URL "
        "for the same file reuses it.",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest file accepted from url, in bytes; a larger one fails with reason "
        "BadData before or while it is downloaded. Unset: the operator's default "
        "(FTO_DOWNLOAD_MAX_BYTES, 10 GiB unless the admin changed it).",
    )
    pvc: str | None = Field(
        default=None,
        max_length=253,
        pattern=_NAME,
        description="PersistentVolumeClaim holding the data; mounted read-only at /data.",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="File (or directory of files) inside the PVC, relative.",
    )
    hub: str | None = Field(default=None, max_length=256, description="Hugging Face dataset id.")
    config_map: ConfigMapKeyRef | None = Field(
        default=None, description="A small inline dataset kept in a ConfigMap key."
    )
    split: str = Field(default="train", max_length=128, description="Split to read (hub).")
    format: DatasetFormat = Field(
        default="alpaca",
        description="Record format: alpaca (instruction/input/output), sharegpt "
        "(conversations), messages (OpenAI-style chat, rendered with the chat template), "
        "prompt-completion, or text (raw text).",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Field mapping: canonical field name (e.g. instruction) -> column in the data.",
    )
    validation_split: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Fraction of records held out for evaluation (0 = none). The same as "
        "spec.evaluation.fraction, kept for compatibility: set only one of them.",
    )
    chat_template: ChatTemplate | None = Field(
        default=None,
        description="Chat template for sharegpt/messages (needed on a base model, whose "
        "tokenizer has none; replaces the model's own) and alpaca (unset: the classic Alpaca "
        "prompt, saved as the alpaca template; another template turns each record into a "
        "user/assistant conversation). Saved with the adapter.",
    )


class EvaluationDataset(_Base):
    """A separate held-out dataset, read in spec.dataset's format and field mapping."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "[has(self.url), has(self.hub), has(self.path)].filter(x, x).size() == 1",
                "evaluation.dataset: set exactly one of url, hub or path",
            ),
            (
                "!has(self.url) || self.url.startsWith('https://') || "
                "self.url.startsWith('http://')",
                "evaluation.dataset.url must start with http:// or https://",
            ),
            _safe("hub", "evaluation.dataset.hub", _HUB_ID),
            (
                "!has(self.path) || (!self.path.startsWith('/') && !self.path.contains('..'))",
                "evaluation.dataset.path must be relative and must not contain '..'",
            ),
        )
    )

    url: str | None = Field(
        default=None,
        max_length=2048,
        description="HTTP(S) URL of a jsonl, json, parquet or csv file (downloaded and verified "
        "like dataset.url).",
    )
    hub: str | None = Field(default=None, max_length=256, description="Hugging Face dataset id.")
    split: str = Field(default="test", max_length=128, description="Split to read (hub).")
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="A file next to the training data: inside spec.dataset.pvc, or a key of "
        "spec.dataset.configMap (no other volume is mounted for it).",
    )


class EvaluationSettings(_Base):
    """Held-out evaluation during and after training, and sample generations at the end."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!(has(self.fraction) && has(self.dataset))",
                "evaluation: set at most one of fraction (a held-out split of spec.dataset) or "
                "dataset (a separate file)",
            ),
            (
                "!has(self.fraction) || (self.fraction > 0.0 && self.fraction <= 0.5)",
                "evaluation.fraction must be in (0, 0.5]",
            ),
        )
    )

    fraction: float | None = Field(
        default=None,
        description="Fraction of spec.dataset's records held out for evaluation, in (0, 0.5]. "
        "The prepare stage splits deterministically (spec.training.seed) and never trains on a "
        "held-out row; held-out rows identical to a training row are dropped from the "
        "evaluation.",
    )
    dataset: EvaluationDataset | None = Field(
        default=None, description="A separate evaluation dataset instead of a fraction."
    )
    every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Evaluate every N optimizer steps; unset = at every checkpoint "
        "(spec.checkpoint.everySteps). The latest eval loss is in status.progress.evalLoss.",
    )
    prompts: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list,
        max_length=8,
        description="Prompts (rendered like the training data's prompts) whose greedy "
        "generations by the tuned model are recorded at the end: shortened in "
        "status.output.samples, in full in samples.jsonl next to the output.",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=1024, description="Longest generation per prompt, in tokens."
    )


Method = Literal["lora", "qlora", "full"]


class LoraSettings(_Base):
    """LoRA hyperparameters (methods lora and qlora only)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("self.r >= 1 && self.r <= 1024", "lora.r must be between 1 and 1024"),
            ("self.alpha > 0.0", "lora.alpha must be greater than 0"),
            (
                "self.dropout >= 0.0 && self.dropout < 1.0",
                "lora.dropout must be in [0, 1)",
            ),
        )
    )

    r: int = Field(default=16, description="LoRA rank (1..1024).")
    alpha: float = Field(default=32.0, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(default=0.05, description="Dropout on the LoRA path, in [0, 1).")
    target_modules: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt; unset = the architecture's usual attention and MLP "
        "projections.",
    )


Precision = Literal["auto", "bf16", "fp16", "fp32"]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class TrainingSettings(_Base):
    """Optimisation hyperparameters. ``batchSize`` is the effective (global) batch size."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.epochs) != has(self.maxSteps)",
                "training: set exactly one of epochs or maxSteps",
            ),
            (
                "!has(self.microBatchSize) || self.batchSize % self.microBatchSize == 0",
                "training.batchSize must be a multiple of training.microBatchSize",
            ),
            (
                "self.learningRate > 0.0 && self.learningRate <= 1.0",
                "training.learningRate must be in (0, 1]",
            ),
            (
                "!has(self.epochs) || (self.epochs > 0.0 && self.epochs <= 1000.0)",
                "training.epochs must be in (0, 1000]",
            ),
            (
                "self.warmupRatio >= 0.0 && self.warmupRatio < 1.0",
                "training.warmupRatio must be in [0, 1)",
            ),
        )
    )

    epochs: float | None = Field(
        default=None, description="Passes over the data. Exactly one of epochs / maxSteps."
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps instead of epochs."
    )
    learning_rate: float = Field(default=2e-4, description="Peak learning rate, in (0, 1].")
    batch_size: int = Field(
        default=16,
        ge=1,
        le=65536,
        description="Effective batch size: micro-batch x gradient accumulation x processes.",
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Per-process batch; unset = chosen by the memory planner. Must divide "
        "batchSize.",
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=1048576, description="Tokens per sample; longer ones are truncated."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    warmup_ratio: float = Field(
        default=0.0, description="Warm-up as a fraction of the total steps, in [0, 1)."
    )
    scheduler: Scheduler = Field(default="linear", description="Learning-rate schedule.")
    optimizer: str = Field(
        default="adamw_torch",
        max_length=64,
        description="Optimizer name as transformers knows it (adamw_torch, adamw_8bit, "
        "paged_adamw_8bit, adafactor, sgd…).",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0, description="Weight decay.")
    seed: int = Field(default=42, ge=0, description="Seed for initialisation and shuffling.")
    precision: Precision = Field(
        default="auto", description="auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32."
    )
    packing: bool = Field(default=True, description="Pack short samples into full sequences.")
    gradient_checkpointing: bool = Field(
        default=True, description="Recompute activations to save memory (slower, smaller)."
    )


MAX_NODES = 64
"""The most training pods (``resources.nodes``) one job may run at once."""


class Resources(_Base):
    """What each training pod gets, and how many of them run together."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.gpus >= 0 && self.gpus <= 8",
                "resources.gpus must be between 0 (CPU-only) and 8 (per node)",
            ),
        )
    )

    gpus: int = Field(
        default=1,
        description="nvidia.com/gpu requested by each training pod (one per node), 0..8. 0 = "
        "CPU-only training (tiny models, CI); N > 1 = one process per GPU.",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Training pods (nodes) that train together, data parallel: pods "
        "<job>-<attempt>-node-<i> under the headless Service <job>-nodes, torch.distributed "
        "across them (docs/multi-node.md). 1 = one pod <job>-<attempt>. The work volume must be "
        "mountable by every node (ReadWriteMany) when they land on different machines.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request, e.g. 4 or 3500m.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit, e.g. 24Gi."
    )
    gpu_memory_mib: int | None = Field(
        default=None,
        alias="gpuMemoryMiB",
        ge=256,
        description="Memory of one GPU in MiB, a hint for the planner when nodes carry no "
        "nvidia.com/gpu.memory label (e.g. 12288 for an RTX 3060).",
    )


class EnvVar(_Base):
    """An environment variable for the trainer container (as in a Pod)."""

    name: str = Field(max_length=256, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        default=None, description="Source for the value (as in a Pod's env)."
    )


class PodTemplate(_Base):
    """Overrides merged into the pods the operator creates."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the training pod must match."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations (as in a Pod), e.g. for tainted GPU nodes.",
    )
    affinity: dict[str, Any] | None = Field(default=None, description="Affinity (as in a Pod).")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment variables."
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra volumes (as in a Pod).",
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra volume mounts of the trainer container (as in a container).",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="Run as this ServiceAccount instead of the per-job one; the operator binds "
        "the job's progress Role to it.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the training pod."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels (e.g. kueue.x-k8s.io/queue-name)."
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra annotations.")


class CheckpointSettings(_Base):
    """Checkpoint cadence and retention."""

    every_steps: int = Field(
        default=50, ge=1, description="Save a checkpoint every N optimizer steps."
    )
    keep: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Complete checkpoints to keep: the newest ones, plus the one evaluated with "
        "the lowest eval loss (status.output.summary.bestCheckpoint) when it is older.",
    )


GgufQuantization = Literal[
    "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m"
]  # fmt: skip
# plain HTTP only to loopback or the test net 198.18.0.0/15 (the trainer checks the same)
_PLAIN_HTTP_HOST = r"^(127\\.0\\.0\\.1|198\\.1[89]\\.[0-9]{1,3}\\.[0-9]{1,3})(:[0-9]+)?/"


class LocalSecretRef(_Base):
    """A Secret in the job's namespace."""

    name: str = Field(max_length=253, pattern=_NAME, description="Secret name.")


class GgufExport(_Base):
    """A GGUF file for llama.cpp and Ollama, made with llama.cpp's converter and quantizer."""

    quantization: GgufQuantization = Field(
        default="q4_k_m",
        description="llama.cpp type: f16, bf16 and q8_0 come from the converter, the others "
        "from llama-quantize.",
    )


class OciExport(_Base):
    """The adapter pushed to a registry as an OCI artifact (ORAS layout: one layer per file)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.plainHttp) || !self.plainHttp || "
                f"self.repository.matches('{_PLAIN_HTTP_HOST}')",
                "output.export.oci.plainHttp is only allowed for 127.0.0.1 or 198.18.0.0/15",
            ),
        )
    )

    repository: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+$",
        description="Registry host[:port]/path, e.g. ghcr.io/acme/support-bot-adapter.",
    )
    tag: str = Field(
        default="latest", pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$", description="Tag."
    )
    credentials_secret_ref: LocalSecretRef | None = Field(
        default=None,
        description="Secret of type kubernetes.io/dockerconfigjson with the push credentials "
        "(key .dockerconfigjson); mounted only into the export pod.",
    )
    plain_http: bool = Field(
        default=False, description="HTTP without TLS: only for 127.0.0.1 or 198.18.0.0/15."
    )


class ExportSettings(_Base):
    """What the CPU export pod makes after training succeeded (phase Exporting)."""

    merged: bool = Field(
        default=False, description="Merged 16-bit safetensors in output/merged (peft merge)."
    )
    dtype: Literal["bfloat16", "float16"] = Field(
        default="bfloat16", description="dtype of the merged weights."
    )
    gguf: GgufExport | None = Field(
        default=None, description="A GGUF in output/gguf/<job>-<QUANT>.gguf (implies the merge)."
    )
    oci: OciExport | None = Field(default=None, description="Push the adapter to a registry.")
    cpu: Quantity = Field(default="2", description="CPU request of the export pod.")
    memory: Quantity = Field(
        default="8Gi",
        description="Memory request and limit of the export pod (the merge holds the base "
        "model in float32: about 4 bytes per parameter plus the 16-bit copy).",
    )


class ExportOutcome(_Base):
    """One export's result (``status.output.exports`` items), from the export pod's report."""

    kind: Literal["merged", "gguf", "oci"] = Field(description="What was exported.")
    ok: bool = Field(description="Whether it worked.")
    location: str | None = Field(
        default=None,
        description="A file's path relative to the run's output directory (status.output.path), "
        "or registry/repository:tag.",
    )
    digest: str | None = Field(default=None, description="sha256 of the GGUF or the manifest.")
    size_bytes: int | None = Field(default=None, ge=0, description="Bytes written or pushed.")
    error: str | None = Field(default=None, description="Why it failed (a sentence).")


class OutputSettings(_Base):
    """Where checkpoints and results go: an existing PVC, or one the operator creates."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "has(self.pvc) != has(self.size)",
                "output: set exactly one of pvc (existing claim) or size (new claim)",
            ),
            (
                "!has(self.storageClass) || has(self.size)",
                "output.storageClass only applies with output.size",
            ),
        )
    )

    pvc: str | None = Field(
        default=None,
        max_length=253,
        pattern=_NAME,
        description="Existing PersistentVolumeClaim; the job works in its subdirectory named "
        "after the job. Never deleted by the operator.",
    )
    size: Quantity | None = Field(
        default=None,
        description="Size of a claim <job>-output the operator creates (kept after the job is "
        "deleted so the results survive).",
    )
    storage_class: str | None = Field(
        default=None, max_length=253, description="StorageClass of the created claim."
    )
    merge_adapter: bool = Field(
        default=False, description="Also write the base model with the adapter merged in."
    )
    export: ExportSettings | None = Field(
        default=None,
        description="Exports for serving, made by a CPU pod after training (phase Exporting): "
        "merged weights, GGUF, the adapter as an OCI artifact. A failed export fails the job "
        "with reason ExportFailed; the trained adapter stays in output/adapter.",
    )


class CacheSettings(_Base):
    """The shared model cache (hub downloads)."""

    pvc: str | None = Field(
        default=None,
        max_length=253,
        pattern=_NAME,
        description="A shared model cache claim, mounted read-only at /shared-cache: the model is "
        "loaded from it when it holds the model's snapshot (a Hugging Face hub cache under hub/, "
        "filled by the admin), else downloaded into the pod's own emptyDir (again on every "
        "attempt). No job can write to it.",
    )


class RetrySettings(_Base):
    """Retries of failed attempts (OOM, eviction, errors) with exponential backoff."""

    limit: int = Field(
        default=3, ge=0, le=100, description="Retries after the first attempt; then Failed."
    )
    backoff_seconds: int = Field(
        default=10, ge=0, le=3600, description="Delay before the first retry; doubles each time."
    )
    max_backoff_seconds: int = Field(
        default=600, ge=0, le=86400, description="Upper bound of the delay."
    )


class SecretKeyRef(_Base):
    """A key of a Secret in the job's namespace."""

    model_config = ConfigDict(json_schema_extra=_rules(_safe("key", "hubTokenSecretRef.key", _KEY)))

    name: str = Field(max_length=253, pattern=_NAME, description="Secret name.")
    key: str = Field(default="token", max_length=253, description="Key holding the token.")


class SecretName(_Base):
    """A Secret in the job's namespace."""

    name: str = Field(max_length=253, pattern=_NAME, description="Secret name.")


# http(s)://host[:port][/path]: no credentials, query or fragment; not a link-local, unspecified
# or metadata host (the node's cloud credentials). The trainer checks the same (tracking.py).
_URL_SHAPE = r"^https?://[^/?#@\\s]+(/[^?#\\s]*)?$"
_URL_FORBIDDEN = (
    r"(?i)^https?://(169\\.254\\.|\\[fe[89ab][0-9a-f]:|\\[::\\]|0\\.0\\.0\\.0|"
    r"metadata(\\.google\\.internal)?\\.?([:/]|$))"
)


def _url_rules(field: str, where: str) -> tuple[tuple[str, str], tuple[str, str]]:
    return (
        (
            f"!has(self.{field}) || self.{field}.matches('{_URL_SHAPE}')",
            f"{where} must be http(s)://host[:port][/path], without credentials (use the "
            "Secret), query or fragment",
        ),
        (
            f"!has(self.{field}) || !self.{field}.matches('{_URL_FORBIDDEN}')",
            f"{where} must not name a link-local, unspecified or cloud metadata address",
        ),
    )


class MlflowTracking(_Base):
    """Log parameters and per-step metrics to an MLflow tracking server."""

    model_config = ConfigDict(
        json_schema_extra=_rules(*_url_rules("trackingUri", "tracking.mlflow.trackingUri"))
    )

    tracking_uri: str = Field(
        max_length=2048,
        description="http(s) URL of the tracking server (e.g. http://mlflow.mlflow:5000).",
    )
    experiment: str | None = Field(
        default=None, max_length=256, description="Experiment name; unset = the job's name."
    )
    credentials_secret_ref: SecretName | None = Field(
        default=None,
        description="Secret with key 'token' (bearer token) or keys 'username' and 'password', "
        "given to the trainer as MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD env; a Secret "
        "without them fails the job with reason BadConfig.",
    )


class WandbTracking(_Base):
    """Log to Weights & Biases: offline (files on the job's volume, `wandb sync` later) or
    online with an API key from a Secret."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.mode != 'online' || has(self.apiKeySecretRef)",
                "tracking.wandb.mode online needs apiKeySecretRef",
            ),
            *_url_rules("baseUrl", "tracking.wandb.baseUrl"),
        )
    )

    project: str = Field(max_length=128, pattern=r"^[-._A-Za-z0-9]+$", description="Project.")
    entity: str | None = Field(
        default=None, max_length=128, pattern=r"^[-._A-Za-z0-9]+$", description="Team or user."
    )
    mode: Literal["offline", "online"] = Field(
        default="offline",
        description="offline: runs are written under tracking/wandb on the job's volume; "
        "online: sent to W&B (needs apiKeySecretRef).",
    )
    base_url: str | None = Field(
        default=None, max_length=2048, description="A self-hosted W&B server's URL."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key (WANDB_API_KEY env)."
    )


class Tracking(_Base):
    """Experiment tracking of the training run (every attempt continues the same run)."""

    tensorboard: bool = Field(
        default=True,
        description="TensorBoard event files: written live under tensorboard/ on the job's "
        "volume and copied into output/tensorboard.",
    )
    mlflow: MlflowTracking | None = Field(default=None, description="MLflow tracking server.")
    wandb: WandbTracking | None = Field(default=None, description="Weights & Biases.")


Backend = Literal["auto", "unsloth", "transformers"]

_IMMUTABLE = "(has(oldSelf.suspend) && oldSelf.suspend)"


# Spec edits a resume cannot honour once a checkpoint exists: the checkpoint's step counts
# batches of the old size over the old prepared rows, and its weights and optimizer state have the
# old shapes. Root-level rules (they read status.checkpoint); crd.py attaches them to the object.
_LOCKED_AFTER_CHECKPOINT = (
    ("spec.training.batchSize", "training.batchSize", "its step counts batches of the old size"),
    ("spec.training.maxSeqLength", "training.maxSeqLength", "the prepared rows would change"),
    ("spec.training.packing", "training.packing", "the prepared rows would change"),
    ("spec.training.seed", "training.seed", "the data order would change"),
    ("spec.training.optimizer", "training.optimizer", "the optimizer state is of the old one"),
    ("spec.method", "method", "the saved weights are of the old method"),
    ("spec.lora", "lora", "the saved adapter has the old shape"),
)
EDIT_RULES: list[tuple[str, str]] = [
    (
        f"!has(oldSelf.status) || !has(oldSelf.status.checkpoint) || "
        f"(has(self.{path}) == has(oldSelf.{path}) && "
        f"(!has(self.{path}) || self.{path} == oldSelf.{path}))",
        f"{name} cannot change once the job has a checkpoint (status.checkpoint): {why}, so a "
        "resume could not honour it. Set it before the first checkpoint, or create a new job",
    )
    for path, name, why in _LOCKED_AFTER_CHECKPOINT
] + [
    (
        "!has(self.spec.training.maxSteps) || !has(oldSelf.status) || "
        "!has(oldSelf.status.checkpoint) || "
        "self.spec.training.maxSteps >= oldSelf.status.checkpoint.step",
        "training.maxSteps cannot go below the step of the job's checkpoint "
        "(status.checkpoint.step): those steps are trained already",
    )
]
"""CEL rules on the whole FineTuneJob refusing edits a resume cannot honour (docs/api.md)."""


class FineTuneJobSpec(_Base):
    """What to fine-tune, on what data, how, and where the results go."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "self.method != 'qlora' || !has(self.resources) || self.resources.gpus >= 1",
                "method qlora needs resources.gpus >= 1 (4-bit quantisation runs on CUDA only)",
            ),
            (
                "!has(self.lora) || self.method != 'full'",
                "lora settings apply only to methods lora and qlora",
            ),
            (
                "self.backend != 'unsloth' || !has(self.resources) || self.resources.gpus >= 1",
                "backend unsloth needs resources.gpus >= 1",
            ),
            (
                "!has(self.training.microBatchSize) || "
                "self.training.batchSize % (self.training.microBatchSize * "
                "(has(self.resources) && self.resources.gpus > 1 ? self.resources.gpus : 1)) == 0",
                "training.batchSize must be a multiple of training.microBatchSize x "
                "resources.gpus (the effective batch is micro-batch x accumulation x GPUs)",
            ),
            (
                "!has(self.evaluation) || !has(self.evaluation.fraction) || "
                "self.dataset.validationSplit == 0.0",
                "set only one of evaluation.fraction and dataset.validationSplit",
            ),
            (
                "!has(self.evaluation) || !has(self.evaluation.dataset) || "
                "!has(self.evaluation.dataset.path) || has(self.dataset.pvc) || "
                "has(self.dataset.configMap)",
                "evaluation.dataset.path names a file next to the training data: it needs "
                "dataset.pvc or dataset.configMap",
            ),
            (
                f"self.model == oldSelf.model || {_IMMUTABLE}",
                "spec.model is immutable while the job is not suspended (set suspend: true first)",
            ),
            (
                f"self.dataset == oldSelf.dataset || {_IMMUTABLE}",
                "spec.dataset is immutable while the job is not suspended (set suspend: true "
                "first)",
            ),
            (
                f"self.method == oldSelf.method || {_IMMUTABLE}",
                "spec.method is immutable while the job is not suspended (set suspend: true first)",
            ),
        )
    )

    model: ModelSource = Field(description="The base model.")
    dataset: DatasetSource = Field(description="The training data.")
    method: Method = Field(
        default="lora",
        description="lora (adapter on bf16/fp16 weights), qlora (adapter on 4-bit weights, GPU "
        "only) or full (all weights).",
    )
    lora: LoraSettings | None = Field(
        default=None, description="LoRA settings (lora/qlora only; defaults when unset)."
    )
    training: TrainingSettings = Field(description="Optimisation hyperparameters.")
    resources: Resources = Field(default_factory=Resources, description="GPUs, CPU and memory.")
    pod_template: PodTemplate | None = Field(
        default=None, description="Scheduling and environment overrides for the pods."
    )
    checkpoint: CheckpointSettings = Field(
        default_factory=CheckpointSettings, description="Checkpoint cadence and retention."
    )
    output: OutputSettings = Field(description="Where checkpoints and results are written.")
    evaluation: EvaluationSettings | None = Field(
        default=None,
        description="Held-out evaluation (periodic eval loss, final eval loss) and sample "
        "generations; unset = none (or dataset.validationSplit alone).",
    )
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Model cache.")
    suspend: bool = Field(
        default=False,
        description="true pauses the job: the pod checkpoints and exits, the GPUs are freed; "
        "false resumes from the newest checkpoint. model, dataset and method can only be "
        "changed while suspended.",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kueue LocalQueue for the training pods (label kueue.x-k8s.io/queue-name): "
        "each attempt is one Kueue pod group, admitted against the queue's quota; the phase is "
        "Queued until Kueue admits it, and a Kueue preemption is handled like a suspend "
        "(docs/kueue.md). Unset = no Kueue.",
    )
    image: str | None = Field(
        default=None, max_length=512, description="Trainer image; unset = the operator's default."
    )
    backend: Backend = Field(
        default="auto",
        description="auto (unsloth on CUDA when available, else transformers), unsloth or "
        "transformers.",
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings, description="Retries of failed attempts."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the job (not its output) this many seconds after it succeeds or fails.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job (reason DeadlineExceeded) when it has been active this long, "
        "counted from its creation or its last resume (time suspended does not count).",
    )
    progress_deadline_seconds: int | None = Field(
        default=None,
        ge=60,
        description="While Running, no progress report for this long stops the attempt (reason "
        "Stalled) and retries it from the newest checkpoint (counts against retry.limit).",
    )
    queue_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job (reason QueueTimeout) when its pod has waited this long for a "
        "node (phase Queued).",
    )
    hub_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token (gated models/datasets). Never "
        "copied into status or logs.",
    )
    tracking: Tracking = Field(
        default_factory=Tracking,
        description="Experiment tracking: TensorBoard (on by default), MLflow, W&B. "
        "Credentials only from Secrets.",
    )


# --------------------------------------------------------------------------------------- status


class Condition(_Base):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason of the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed for."
    )


class SkippedCheckpoint(_Base):
    """A damaged checkpoint the trainer set aside (renamed ``<path>.corrupt``) on resume."""

    path: str = Field(max_length=1024, description="Path relative to the job's volume.")
    error: str | None = Field(default=None, max_length=300, description="Why it could not be used.")


class Progress(_Base):
    """Validated copy of what the trainer reports."""

    attempt: int | None = Field(default=None, description="Attempt that reported it.")
    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Steps in the whole run.")
    percent: float | None = Field(default=None, ge=0, le=100, description="step / totalSteps.")
    percent_text: str | None = Field(default=None, description="percent as text, e.g. 30%.")
    epoch: float | None = Field(default=None, ge=0, description="Fractional epoch.")
    loss: float | None = Field(default=None, description="Training loss (latest window).")
    eval_loss: float | None = Field(
        default=None,
        description="Loss on the held-out evaluation data at its latest evaluation "
        "(spec.evaluation); `kubectl get -o wide` shows it.",
    )
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Throughput.")
    eta_seconds: int | None = Field(default=None, ge=0, description="Estimated seconds left.")
    eta: str | None = Field(default=None, description="ETA as text, e.g. 1h20m.")
    gpu_memory_mib: int | None = Field(
        default=None, alias="gpuMemoryMiB", ge=0, description="Peak GPU memory per GPU."
    )
    packing: str | None = Field(
        default=None,
        max_length=200,
        description=(
            "Sample packing in effect when spec.training.packing is on: `isolated` (packed "
            "samples proven not to attend to each other on the loaded model), or `off: <why>` "
            "when the backend could not isolate them and rows are padded instead."
        ),
    )
    edits: list[str] | None = Field(
        default=None,
        max_length=10,
        description=(
            "Spec edits made while suspended that this attempt applied on resume, e.g. "
            "`learningRate 0.003 -> 0.0001 from step 14` (also an Event, reason SpecEditApplied)."
        ),
    )
    resumed_from: str | None = Field(
        default=None,
        max_length=1024,
        description="Checkpoint this attempt resumed from (path relative to the job's volume); "
        "null when it started from step 0.",
    )
    skipped_checkpoints: list[SkippedCheckpoint] | None = Field(
        default=None,
        max_length=10,
        description="Newer checkpoints this attempt found damaged and set aside (renamed "
        "`.corrupt`) before resuming from an older one (also an Event, reason "
        "CheckpointSkipped).",
    )
    updated_at: datetime | None = Field(default=None, description="When the trainer reported.")


class CheckpointStatus(_Base):
    """Newest complete checkpoint."""

    step: int = Field(ge=0, description="Step of the checkpoint.")
    path: str = Field(
        default="",
        description="Path relative to the job's directory on the claim, with the run prefix "
        "(runs/<n>/) after a restart.",
    )
    time: datetime | None = Field(default=None, description="When it was written.")


class DataStatus(_Base):
    """What the prepare stage found in the dataset."""

    records: int | None = Field(default=None, ge=0, description="Records after validation.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens after formatting.")
    truncated: int | None = Field(default=None, ge=0, description="Records cut at maxSeqLength.")
    evaluation_records: int | None = Field(
        default=None, ge=0, description="Held-out records evaluated (never trained on)."
    )


class PlanStatus(_Base):
    """The memory plan (prepare stage; micro-batch halved on CUDA OOM)."""

    strategy: str | None = Field(default=None, description="single, ddp or model split.")
    micro_batch_size: int | None = Field(default=None, ge=1, description="Per-process batch.")
    gradient_accumulation: int | None = Field(default=None, ge=1, description="Accumulation.")
    estimated_gpu_memory_mib: int | None = Field(
        default=None, alias="estimatedGpuMemoryMiB", ge=0, description="Estimated peak per GPU."
    )
    gpu_memory_mib: int | None = Field(
        default=None, alias="gpuMemoryMiB", ge=0, description="Memory of one GPU planned for."
    )
    parameters: int | None = Field(default=None, ge=0, description="Model parameters.")
    fits: bool | None = Field(default=None, description="The planner's verdict.")
    message: str | None = Field(default=None, description="The planner's explanation.")


class ExportStatus(_Base):
    """One export of the result (merged weights, GGUF, an OCI artifact…)."""

    kind: str = Field(max_length=32, description="What was exported, e.g. merged, gguf, oci.")
    location: str = Field(
        max_length=2048,
        description="Where: a path relative to the output claim (status.output.claim), or an "
        "OCI reference (registry/repository:tag).",
    )
    digest: str | None = Field(
        default=None, max_length=256, description="Content digest, e.g. sha256:<hex>."
    )
    time: datetime | None = Field(default=None, description="When it was written or pushed.")


class SampleGeneration(_Base):
    """A greedy generation of the tuned model for one of spec.evaluation.prompts (shortened)."""

    prompt: str = Field(max_length=200, description="The prompt, cut at 200 characters.")
    completion: str = Field(
        max_length=500, description="What the tuned model wrote, cut at 500 characters."
    )


class OutputSummary(_Base):
    """How the run went, from the trainer's summary.json."""

    steps: int | None = Field(default=None, ge=0, description="Optimizer steps trained.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens trained on.")
    train_loss: float | None = Field(default=None, description="Final training loss.")
    eval_loss: float | None = Field(
        default=None, description="Loss on the held-out data after training."
    )
    best_eval_loss: float | None = Field(
        default=None, description="Lowest periodic eval loss during training."
    )
    best_checkpoint: str | None = Field(
        default=None,
        max_length=1024,
        description="The kept checkpoint evaluated with the lowest eval loss (path relative to "
        "the job's directory on the claim, run prefix included), if still kept.",
    )


class OutputStatus(_Base):
    """Where the current run's results are and what is there."""

    claim: str = Field(max_length=253, description="PersistentVolumeClaim holding the output.")
    path: str = Field(
        max_length=1024,
        description="The current run's output directory, relative to the claim: <job>/output, "
        "or <job>/runs/<n>/output after the n-th restart.",
    )
    latest: str = Field(
        max_length=1024,
        description="A stable path relative to the claim, <job>/latest: a symlink the trainer "
        "replaces atomically to point at the newest finished run's output. Mount this one.",
    )
    run: int = Field(default=0, ge=0, description="The run (status.run) this output belongs to.")
    ready: bool = Field(
        default=False, description="True once the run succeeded and its output is complete."
    )
    adapter: str | None = Field(
        default=None,
        max_length=1024,
        description="The LoRA adapter directory (lora/qlora), relative to the claim.",
    )
    model: str | None = Field(
        default=None,
        max_length=1024,
        description="The full fine-tuned model directory (method full), relative to the claim.",
    )
    merged: str | None = Field(
        default=None,
        max_length=1024,
        description="Base model with the adapter merged in (output.mergeAdapter).",
    )
    gguf: str | None = Field(
        default=None, max_length=1024, description="A GGUF file of the result, when exported."
    )
    exports: list[ExportStatus] = Field(
        default_factory=list, max_length=16, description="Exports written or pushed."
    )
    summary: OutputSummary | None = Field(default=None, description="How the run went.")
    samples: list[SampleGeneration] = Field(
        default_factory=list, max_length=8, description="Greedy generations (shortened)."
    )
    samples_file: str | None = Field(
        default=None,
        max_length=1024,
        description="samples.jsonl with the full generations, relative to the claim.",
    )


class Attempt(_Base):
    """One finished training (or prepare) pod."""

    attempt: int = Field(ge=0, description="Attempt number (0 = the prepare pod).")
    pod: str = Field(description="Pod name.")
    reason: str = Field(description="Why it ended (Completed, Suspended, OOMKilled, CudaOOM…).")
    exit_code: int | None = Field(default=None, description="Trainer exit code, if any.")
    step: int | None = Field(default=None, ge=0, description="Last step reported.")
    message: str | None = Field(default=None, description="Termination message.")
    start_time: datetime | None = Field(default=None, description="When the pod started.")
    finish_time: datetime | None = Field(default=None, description="When it ended.")


class NodeStatus(_Base):
    """One training pod of the current attempt (``resources.nodes`` > 1)."""

    rank: int = Field(ge=0, description="Node rank (PET_NODE_RANK); node 0 is the master.")
    pod: str = Field(description="Pod name.")
    state: str = Field(
        description="pending, unschedulable, waiting-error, running, succeeded, failed or missing."
    )
    reason: str | None = Field(default=None, description="Why it failed or waits, if it does.")
    exit_code: int | None = Field(default=None, description="Trainer exit code, if it ended.")


class FineTuneJobStatus(_Base):
    """Observed state, written only by the operator."""

    phase: Phase | None = Field(default=None, description="Lifecycle phase.")
    reason: str | None = Field(default=None, description="Reason of the phase (failure class).")
    message: str | None = Field(default=None, description="Human-readable detail.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled, Progressing, Suspended, Succeeded, Failed.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    attempt: int = Field(default=0, ge=0, description="Number of the current training attempt.")
    attempts: list[Attempt] = Field(default_factory=list, description="Finished pods.")
    retry_after: datetime | None = Field(
        default=None, description="The next attempt starts not before this time (backoff)."
    )
    progress: Progress | None = Field(default=None, description="Training progress.")
    nodes: list[NodeStatus] | None = Field(
        default=None,
        description="Per-node state of the current attempt's pods (resources.nodes > 1 only).",
    )
    checkpoint: CheckpointStatus | None = Field(default=None, description="Newest checkpoint.")
    output: OutputStatus | None = Field(
        default=None, description="Where the current run's results are, and how it went."
    )
    data: DataStatus | None = Field(default=None, description="Dataset statistics.")
    plan: PlanStatus | None = Field(default=None, description="Memory plan.")
    start_time: datetime | None = Field(default=None, description="First training pod start.")
    completion_time: datetime | None = Field(default=None, description="When it ended.")
    completed_generation: int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation the job finished (Succeeded or Failed) with. A larger "
        "metadata.generation means the spec was edited after completion and never trained: "
        "the conditions say so, with a Warning Event SpecChangedAfterCompletion.",
    )
    run: int = Field(
        default=0,
        ge=0,
        description="Run number: 0 at first, bumped by every restart "
        "(annotation finetune.dev/restart-requested-at). Run n > 0 works in its own directory, "
        "runs/<n> under the job's work volume, so it starts from step 0 with no checkpoint.",
    )
    last_restart_requested_at: str | None = Field(
        default=None,
        description="Value of the finetune.dev/restart-requested-at annotation the operator "
        "last acted on; a different value asks for a restart.",
    )
    last_retry_requested_at: str | None = Field(
        default=None,
        description="Value of the finetune.dev/retry-requested-at annotation the operator last "
        "acted on; a different value asks a Failed job to try again.",
    )
    retry_budget_from: int = Field(
        default=0,
        ge=0,
        description="Failures in status.attempts before this index do not count against "
        "spec.retry.limit: set to the number of attempts by each retry of a Failed job "
        "(annotation finetune.dev/retry-requested-at).",
    )


class FineTuneJob(_Base):
    """A fine-tuning run of an open LLM on your data."""

    api_version: Literal["finetune.dev/v1alpha1"] = Field(
        default="finetune.dev/v1alpha1", description="finetune.dev/v1alpha1"
    )
    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="FineTuneJob")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: FineTuneJobSpec = Field(description="Desired state.")
    status: FineTuneJobStatus = Field(
        default_factory=FineTuneJobStatus, description="Observed state."
    )

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 1))


def training_pod_count(spec: FineTuneJobSpec) -> int:
    """Pods one training attempt runs at once (a Kueue pod group's total count)."""
    return spec.resources.nodes


def processes_per_node(spec: FineTuneJobSpec) -> int:
    """Trainer processes in each training pod: one per GPU, one on CPU."""
    return max(spec.resources.gpus, 1)


def world_size(spec: FineTuneJobSpec) -> int:
    """Trainer processes of an attempt on all its nodes (the batch is divided over them)."""
    return processes_per_node(spec) * spec.resources.nodes


def parse_job(body: dict[str, Any]) -> FineTuneJob:
    """A FineTuneJob from an API object (raises pydantic.ValidationError on a bad spec)."""
    return FineTuneJob.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": dict(body.get("metadata") or {}),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
    )


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict with camelCase keys and no nulls (what goes to the API)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)

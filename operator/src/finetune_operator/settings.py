"""Operator settings, read once at startup from ``FTO_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# the default volume allowlist (the same tuple as security.DEFAULT_VOLUME_TYPES)
DEFAULT_VOLUME_TYPES = (
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "emptyDir",
    "ephemeral",
    "projected",
    "downwardAPI",
)
# the default node label allowlist: what GPU Feature Discovery and the cloud put on nodes to pick
# a GPU, an architecture, an instance type or a zone (security.py, the chart's policy values)
DEFAULT_NODE_LABEL_KEYS = (
    "nvidia.com/gpu.product",
    "nvidia.com/gpu.memory",
    "nvidia.com/gpu.count",
    "nvidia.com/gpu.family",
    "kubernetes.io/arch",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
)


class Settings(BaseSettings):
    """Everything configurable about the operator (env prefix ``FTO_``)."""

    model_config = SettingsConfigDict(env_prefix="FTO_", frozen=True, extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Namespaces to watch, comma-separated; empty = the whole cluster.",
    )
    trainer_image: str = Field(
        default="localhost/finetune-trainer:dev",
        description="Trainer image when spec.image is unset.",
    )
    image_pull_policy: str = Field(default="IfNotPresent", description="For trainer pods.")
    termination_grace_seconds: int = Field(
        default=0,
        ge=0,
        description="Grace period of training pods; 0 = derived per job from the model size "
        "(one step + one checkpoint save + a margin, planner.grace_seconds).",
    )
    grace_write_mib_per_second: float = Field(
        default=100.0,
        gt=0,
        description="Write bandwidth to the work volume assumed for the derived grace period.",
    )
    grace_margin_seconds: int = Field(
        default=30, ge=0, description="Added to the derived grace period."
    )
    progress_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often the trainer writes progress while nothing else happens (and we "
        "mirror it); the first step, checkpoints, evaluations and the end are reported at once. "
        "Each report costs one ConfigMap write and one status patch.",
    )
    api_server: str | None = Field(
        default=None,
        description="API server URL given to trainer pods; None = their in-cluster config.",
    )
    # Per-job retry defaults live in the CRD schema (spec.retry); this caps them cluster-wide.
    retry_max_backoff_seconds: int = Field(
        default=3600, ge=0, description="Upper bound of any job's retry delay."
    )
    resync_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Period of the safety-net resync of unfinished jobs (events and per-job "
        "timers do the work; this catches a missed watch event).",
    )
    reconcile_workers: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Threads that reconcile jobs from the work queue (one job on one thread at "
        "a time); a reconcile mostly waits for the API server (at 1,000 jobs on 2 cores, 4 "
        "threads kept up with 43 reconciles a second and the reports waited 23 s; 8 kept up).",
    )
    leader_election: bool = Field(
        default=True,
        description="Hold a coordination.k8s.io Lease and reconcile only while holding it, so "
        "two replicas can run (one acts, the other takes over within the lease duration).",
    )
    lease_name: str = Field(default="finetune-operator", description="Name of the Lease.")
    lease_namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease; unset = the first watched namespace, else default.",
    )
    lease_duration_seconds: int = Field(
        default=15, ge=3, le=300, description="A leader that stops renewing is replaced after it."
    )
    download_max_bytes: int = Field(
        default=10 * 2**30,
        ge=1,
        description="Largest dataset download (spec.dataset.url) when the job sets no "
        "spec.dataset.maxBytes.",
    )
    prepare_cpu: str = Field(default="500m", description="CPU request of the prepare pod.")
    prepare_memory: str = Field(default="2Gi", description="Memory request/limit of prepare pods.")
    metrics_port: int = Field(default=8000, ge=0, le=65535, description="Prometheus port (0=off).")
    health_port: int = Field(default=8080, ge=0, le=65535, description="Liveness port (0=off).")
    watch_server_timeout: int = Field(
        default=300, ge=1, description="Seconds the apiserver keeps one watch open."
    )
    watch_client_timeout: int = Field(
        default=330, ge=1, description="Client-side watch deadline (kopf issues #585, #1276)."
    )

    # the admin's allowlists (security.py; the chart's ``policy`` values feed them and the
    # admission policy's parameters alike)
    allowed_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Images spec.image may name besides trainer_image, comma-separated; an entry "
        "ending in * is a prefix.",
    )
    allowed_volume_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_VOLUME_TYPES),
        description="Volume types spec.podTemplate.volumes may use, comma-separated.",
    )
    allowed_priority_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="PriorityClasses spec.podTemplate.priorityClassName may name (* = any).",
    )
    allowed_toleration_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nvidia.com/gpu"],
        description="Taint keys spec.podTemplate.tolerations may tolerate (* = any, including "
        "a toleration without key).",
    )
    allowed_node_label_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_NODE_LABEL_KEYS),
        description="Node label keys spec.podTemplate.nodeSelector and nodeAffinity may name "
        "(* = any, and pod (anti-)affinity too).",
    )
    allow_trust_remote_code: bool = Field(
        default=False, description="Whether spec.model.trustRemoteCode may be true."
    )

    @field_validator(
        "namespaces",
        "allowed_images",
        "allowed_volume_types",
        "allowed_priority_classes",
        "allowed_toleration_keys",
        "allowed_node_label_keys",
        mode="before",
    )
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [ns.strip() for ns in value.split(",") if ns.strip()]
        return value

"""Pure builders of the objects a FineTuneJob owns: plain values in, manifests (dicts) out.

No API calls, no clock, no environment: everything comes in as arguments (the job, the attempt
number, the batch plan, the settings), so each builder is tested by comparing whole manifests.
The trainer config follows docs/contract.md section 1.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_operator import integrations, kueue, planner
from finetune_operator import models as m
from finetune_operator.planner import BatchPlan
from finetune_operator.settings import Settings

CONFIG_DIR = "/etc/finetune"
CONFIG_KEY = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
WORK_DIR = "/workspace"
CACHE_DIR = "/cache"
SHARED_CACHE_DIR = "/shared-cache"  # spec.cache.pvc, read-only (the trainer's hubcache.py)
MODELS_DIR = "/models"
DATA_DIR = "/data"
HUB_TOKEN_DIR = "/var/run/secrets/finetune.dev/hub"
REGISTRY_DIR = "/var/run/secrets/finetune.dev/registry"  # the export pod's push credentials
REGISTRY_KEY = ".dockerconfigjson"
PROGRESS_KEY = "progress.json"
PREPARE_KEY = "prepare.json"
TRAINER_UID = 1000
POD_NAME_ENV = "FTO_POD_NAME"
CONTAINER = "trainer"
MANAGED_BY = {"app.kubernetes.io/managed-by": "finetune-operator"}
GPU = "nvidia.com/gpu"
CONTRACT_VERSION = 1
LABEL_NODE_RANK = f"{m.GROUP}/node-rank"
MASTER_PORT = 29500  # PET_MASTER_PORT: torch.distributed's usual rendezvous port on node 0
# NCCL's own choice of interface may pick a bridge or a secondary network; a pod's network is
# eth0 on nearly every CNI. A spec.podTemplate.env entry of the same name replaces a default
# (docs/multi-node.md: NCCL_IB_DISABLE, NCCL_P2P_DISABLE for consumer cards on PCIe).
NCCL_DEFAULTS = {"NCCL_SOCKET_IFNAME": "eth0"}


# ------------------------------------------------------------------------------------ names


def config_map_name(job: m.FineTuneJob) -> str:
    return config_map_name_for(job.name)


def config_map_name_for(job_name: str) -> str:
    return f"{job_name}-config"


def progress_name(job: m.FineTuneJob) -> str:
    return f"{job.name}-progress"


def trainer_account_name(job: m.FineTuneJob) -> str:
    """The ServiceAccount, Role and RoleBinding of the job's pods."""
    return trainer_account_name_for(job.name)


def trainer_account_name_for(job_name: str) -> str:
    return f"{job_name}-trainer"


def pod_service_account(job: m.FineTuneJob) -> str:
    tpl = job.spec.pod_template
    if tpl is not None and tpl.service_account_name:
        return tpl.service_account_name
    return trainer_account_name(job)


def prepare_pod_name(job: m.FineTuneJob) -> str:
    return f"{job.name}-prepare"


def train_pod_name(job: m.FineTuneJob, attempt: int, node: int = 0) -> str:
    """``<job>-<attempt>`` for one node; ``<job>-<attempt>-node-<i>`` when several train."""
    if job.spec.resources.nodes == 1:
        return f"{job.name}-{attempt}"
    return f"{job.name}-{attempt}-node-{node}"


def train_pod_names(job: m.FineTuneJob, attempt: int) -> list[str]:
    """Every pod of a training attempt, in node-rank order."""
    return [train_pod_name(job, attempt, i) for i in range(m.training_pod_count(job.spec))]


def nodes_service_name(job: m.FineTuneJob) -> str:
    return f"{job.name}-nodes"


def master_address(job: m.FineTuneJob, attempt: int) -> str:
    """Node 0's DNS name under the headless Service (resolved through the pod's search path)."""
    return f"{train_pod_name(job, attempt, 0)}.{nodes_service_name(job)}"


def export_pod_name(job: m.FineTuneJob) -> str:
    return f"{job.name}-export"


def output_pvc_name(job: m.FineTuneJob) -> str:
    """The claim holding the job's work directory (checkpoints, prepared data, output)."""
    return job.spec.output.pvc or f"{job.name}-output"


# ---------------------------------------------------------------------------------- metadata


def owner_reference(job: m.FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": m.API_VERSION,
        "kind": m.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: m.FineTuneJob, **extra: str) -> dict[str, str]:
    return {**MANAGED_BY, m.LABEL_JOB: job.name, **extra}


def _meta(job: m.FineTuneJob, name: str, **extra_labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, **extra_labels),
        "ownerReferences": [owner_reference(job)],
    }


# ----------------------------------------------------------------------------- trainer config


def _dataset_config(
    ds: m.DatasetSource, settings: Settings, evaluation_fraction: float | None = None
) -> dict[str, Any]:
    path: str | None = None
    if ds.pvc is not None and ds.path is not None:
        path = f"{DATA_DIR}/{ds.path}"
    elif ds.config_map is not None:
        path = f"{DATA_DIR}/{ds.config_map.key}"
    return {
        "url": ds.url,
        "path": path,
        "hub": ds.hub,
        "split": ds.split,
        "format": ds.format.replace("-", "_"),
        "fields": dict(ds.fields),
        "validation_split": ds.validation_split or (evaluation_fraction or 0.0),
        "sha256": ds.sha256,
        "max_bytes": (ds.max_bytes or settings.download_max_bytes) if ds.url else None,
        "chat_template": integrations.chat_template_config(ds),
    }


def _evaluation_config(spec: m.FineTuneJobSpec, settings: Settings) -> dict[str, Any]:
    """``evaluation`` of the trainer config; a separate dataset is read in spec.dataset's format
    (its ``path`` lies next to the training data: the same claim or ConfigMap, at /data)."""
    ev = spec.evaluation or m.EvaluationSettings()
    dataset = None
    if ev.dataset is not None:
        e = ev.dataset
        dataset = {
            "url": e.url,
            "path": f"{DATA_DIR}/{e.path}" if e.path is not None else None,
            "hub": e.hub,
            "split": e.split,
            "format": spec.dataset.format.replace("-", "_"),
            "fields": dict(spec.dataset.fields),
            "validation_split": 0.0,
            "sha256": None,
            "max_bytes": settings.download_max_bytes if e.url else None,
            # rendered like the training records: the same template
            "chat_template": integrations.chat_template_config(spec.dataset),
        }
    return {
        "dataset": dataset,
        "every_steps": ev.every_steps,
        "prompts": list(ev.prompts),
        "max_new_tokens": ev.max_new_tokens,
    }


def work_dir(run: int) -> str:
    """``paths.work`` of a run: the volume's root for run 0, ``runs/<n>`` after the n-th restart
    (a fresh directory: no checkpoint to resume, no prepared data, its own output)."""
    return WORK_DIR if run == 0 else f"{WORK_DIR}/runs/{run}"


def trainer_config(
    job: m.FineTuneJob,
    attempt: int,
    batch: BatchPlan | None,
    gpu_memory_mib: int | None,
    settings: Settings,
) -> dict[str, Any]:
    """The versioned JSON the trainer reads (docs/contract.md section 1)."""
    spec = job.spec
    lora = spec.lora or m.LoraSettings()
    t = spec.training
    model_path = f"{MODELS_DIR}/{spec.model.path}" if spec.model.pvc else None
    hub_token_file = (
        f"{HUB_TOKEN_DIR}/{spec.hub_token_secret_ref.key}" if spec.hub_token_secret_ref else None
    )
    return {
        "version": CONTRACT_VERSION,
        "job": {"name": job.name, "namespace": job.namespace, "uid": job.uid, "attempt": attempt},
        "model": {
            "name": None if model_path else spec.model.name,
            "path": model_path,
            "revision": spec.model.revision,
            "trust_remote_code": spec.model.trust_remote_code,
        },
        "dataset": _dataset_config(
            spec.dataset, settings, spec.evaluation.fraction if spec.evaluation else None
        ),
        "evaluation": _evaluation_config(spec, settings),
        "method": spec.method,
        "lora": {
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": list(lora.target_modules) if lora.target_modules else None,
        },
        "training": {
            "epochs": t.epochs if t.epochs is not None else 1.0,
            "max_steps": t.max_steps,
            "learning_rate": t.learning_rate,
            "batch_size": t.batch_size,
            "micro_batch_size": batch.micro_batch_size if batch else t.micro_batch_size,
            "gradient_accumulation": batch.gradient_accumulation if batch else None,
            "max_seq_length": t.max_seq_length,
            "warmup_steps": t.warmup_steps,
            "warmup_ratio": t.warmup_ratio,
            "scheduler": t.scheduler,
            "optimizer": t.optimizer,
            "weight_decay": t.weight_decay,
            "seed": t.seed,
            "precision": t.precision,
            "packing": t.packing,
            "gradient_checkpointing": t.gradient_checkpointing,
        },
        "checkpoint": {"every_steps": spec.checkpoint.every_steps, "keep": spec.checkpoint.keep},
        "output": {
            "merge_adapter": spec.output.merge_adapter,
            "export": _export_config(spec.output.export),
        },
        "tracking": integrations.tracking_config(spec),
        "backend": spec.backend,
        "gpus": spec.resources.gpus,
        "nodes": spec.resources.nodes,
        "gpu_memory_mib": gpu_memory_mib,
        "paths": {
            "work": work_dir(job.status.run),
            "model_cache": CACHE_DIR,
            "shared_model_cache": SHARED_CACHE_DIR if spec.cache.pvc else None,
            "claim": output_pvc_name(job),
        },
        "progress": {
            "config_map": progress_name(job),
            "namespace": job.namespace,
            "interval_seconds": settings.progress_interval_seconds,
            "api_server": settings.api_server,
        },
        "hub_token_file": hub_token_file,
    }


def _export_config(ex: m.ExportSettings | None) -> dict[str, Any] | None:
    """The trainer's ``output.export`` (finetune_trainer.export.spec.ExportSpec)."""
    if ex is None:
        return None
    oci = ex.oci
    return {
        "merged": ex.merged,
        "dtype": ex.dtype,
        "gguf": {"quantization": ex.gguf.quantization} if ex.gguf is not None else None,
        "oci": None
        if oci is None
        else {
            "repository": oci.repository,
            "tag": oci.tag,
            "credentials_file": f"{REGISTRY_DIR}/{REGISTRY_KEY}"
            if oci.credentials_secret_ref is not None
            else None,
            "plain_http": oci.plain_http,
        },
        "timeout_seconds": 3600,
    }


def config_map(job: m.FineTuneJob, config: dict[str, Any]) -> dict[str, Any]:
    """``<job>-config`` holding ``config.json``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, config_map_name(job)),
        "data": {CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True) + "\n"},
    }


def progress_config_map(job: m.FineTuneJob) -> dict[str, Any]:
    """``<job>-progress``, created empty; the trainer merges its reports into ``data``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, progress_name(job)),
        "data": {},
    }


# ------------------------------------------------------------------------------------- RBAC


def service_account(job: m.FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(job, trainer_account_name(job)),
    }


def role(job: m.FineTuneJob) -> dict[str, Any]:
    """The trainer may read and update its own progress ConfigMap, nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(job, trainer_account_name(job)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [progress_name(job)],
                "verbs": ["get", "patch", "update"],
            }
        ],
    }


def role_binding(job: m.FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(job, trainer_account_name(job)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": trainer_account_name(job),
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": pod_service_account(job),
                "namespace": job.namespace,
            }
        ],
    }


# ------------------------------------------------------------------------------------- storage


def output_pvc(job: m.FineTuneJob) -> dict[str, Any] | None:
    """The claim the operator creates for ``output.size``; None for a user's claim.

    Not owned by the job: deleting the job (or its TTL) must not delete the trained adapter.
    """
    out = job.spec.output
    if out.size is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(out.size)}},
    }
    if out.storage_class:
        spec["storageClassName"] = out.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": output_pvc_name(job),
            "namespace": job.namespace,
            # no ownerReference: this label is what makes it this job's (security.owned_by)
            "labels": labels(job, **{m.LABEL_JOB_UID: job.uid}),
        },
        "spec": spec,
    }


def referenced_pvcs(job: m.FineTuneJob) -> list[str]:
    """User claims the pods mount (must exist before any pod is created)."""
    names = [job.spec.model.pvc, job.spec.dataset.pvc, job.spec.output.pvc, job.spec.cache.pvc]
    return [n for n in dict.fromkeys(names) if n]


# ---------------------------------------------------------------------------------------- pods


def _volumes(job: m.FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(job)}},
        {"name": "workspace", "persistentVolumeClaim": {"claimName": output_pvc_name(job)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": WORK_DIR, "subPath": job.name},
    ]
    # the job's own download cache; a shared cache claim is read-only to every job (the claim's
    # readOnly holds for every mount of it), so one job cannot poison what another loads
    volumes.append({"name": "cache", "emptyDir": {}})
    mounts.append({"name": "cache", "mountPath": CACHE_DIR})
    if spec.cache.pvc:
        volumes.append(
            {
                "name": "shared-cache",
                "persistentVolumeClaim": {"claimName": spec.cache.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "shared-cache", "mountPath": SHARED_CACHE_DIR, "readOnly": True})
    if spec.model.pvc:
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": spec.model.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    ds = spec.dataset
    if ds.pvc:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": ds.pvc, "readOnly": True}}
        )
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    elif ds.config_map is not None:
        volumes.append({"name": "data", "configMap": {"name": ds.config_map.name}})
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    if spec.hub_token_secret_ref is not None:
        # the token only as a file (an HF_TOKEN env var would reach every subprocess); optional:
        # a missing Secret must not leave the pod stuck mounting, the trainer fails BadConfig
        # when the configured file is absent.
        volumes.append(
            {
                "name": "hub-token",
                "secret": {"secretName": spec.hub_token_secret_ref.name, "optional": True},
            }
        )
        mounts.append({"name": "hub-token", "mountPath": HUB_TOKEN_DIR, "readOnly": True})
    extra_volumes, extra_mounts = integrations.volumes(spec)
    volumes += extra_volumes
    mounts += extra_mounts
    tpl = spec.pod_template
    if tpl is not None:
        volumes.extend(dict(v) for v in tpl.volumes)
        mounts.extend(dict(v) for v in tpl.volume_mounts)
    return volumes, mounts


def _env(job: m.FineTuneJob, extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The trainer's environment: ours, then ``extra`` (defaults an entry of the same name in
    spec.podTemplate.env replaces), then the template's."""
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "FINETUNE_JOB", "value": job.name},
        # the file the trainer keeps its log lines in on the volume (trainer podlog.py)
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *integrations.env(job.spec),
    ]
    tpl = job.spec.pod_template
    own = {e.name for e in tpl.env} if tpl is not None else set()
    env.extend({"name": k, "value": v} for k, v in (extra or {}).items() if k not in own)
    if tpl is not None:
        env.extend(m.dump(e) for e in tpl.env)
    return env


def pod_security_context() -> dict[str, Any]:
    """The trainer's user (non-root, uid/gid 1000) and seccomp profile; also the plugin's
    log reader pod's (cli/volumelogs.py)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """No privilege escalation, no capabilities (the restricted Pod Security Standard)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod(
    job: m.FineTuneJob,
    name: str,
    *,
    role_label: str,
    attempt: int,
    command: list[str],
    resources: dict[str, Any],
    settings: Settings,
    priority: bool,
    grace: int,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    tpl = job.spec.pod_template or m.PodTemplate()
    volumes, mounts = _volumes(job)
    meta = _meta(
        job, name, **{m.LABEL_ROLE: role_label, m.LABEL_ATTEMPT: str(attempt)}, **(labels or {})
    )
    meta["labels"] = {**tpl.labels, **meta["labels"]}
    if tpl.annotations:
        meta["annotations"] = dict(tpl.annotations)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": pod_service_account(job),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        # The pause container is PID 1, not the trainer: the kernel drops a signal PID 1 has no
        # handler for, so a SIGTERM in the ~40 ms before the trainer installs its handlers would
        # be lost (trainer keeps going until SIGKILL); as PID > 1 it ends the process at once.
        "shareProcessNamespace": True,
        "securityContext": {
            **pod_security_context(),
            "fsGroup": TRAINER_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": job.spec.image or settings.trainer_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": command,
                "env": _env(job, env),
                "resources": resources,
                "volumeMounts": mounts,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security_context(),
            }
        ],
        "volumes": volumes,
    }
    if tpl.node_selector:
        pod_spec["nodeSelector"] = dict(tpl.node_selector)
    if tpl.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tpl.tolerations]
    if tpl.affinity:
        pod_spec["affinity"] = dict(tpl.affinity)
    if priority and tpl.priority_class_name:
        pod_spec["priorityClassName"] = tpl.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def prepare_pod(job: m.FineTuneJob, settings: Settings) -> dict[str, Any]:
    """``<job>-prepare``: CPU only, small requests; validates data and plans memory."""
    resources = {
        "requests": {"cpu": settings.prepare_cpu, "memory": settings.prepare_memory},
        "limits": {"memory": settings.prepare_memory},
    }
    command = ["finetune-trainer", "prepare", "--config", CONFIG_PATH]
    pod = _pod(
        job,
        prepare_pod_name(job),
        role_label="prepare",
        attempt=0,
        command=command,
        resources=resources,
        settings=settings,
        priority=False,
        # prepare writes nothing a signal could cut in half (temp + rename) and exits at once
        grace=settings.termination_grace_seconds or settings.grace_margin_seconds,
    )
    # never queued: a few CPU seconds that decide whether the job can work at all come before
    # it takes a place in a GPU queue (docs/kueue.md)
    pod["metadata"]["labels"].pop(kueue.LABEL_QUEUE, None)
    return pod


def export_pod(job: m.FineTuneJob, settings: Settings) -> dict[str, Any]:
    """``<job>-export``: CPU only (no GPU request), after training succeeded; reads the adapter,
    writes merged/GGUF next to it, pushes the OCI artifact with the credentials Secret mounted
    here only."""
    ex = job.spec.output.export or m.ExportSettings()
    resources = {
        "requests": {"cpu": str(ex.cpu), "memory": str(ex.memory)},
        "limits": {"memory": str(ex.memory)},
    }
    pod = _pod(
        job,
        export_pod_name(job),
        role_label="export",
        attempt=0,
        command=["finetune-trainer", "export", "--config", CONFIG_PATH],
        resources=resources,
        settings=settings,
        priority=False,
        grace=settings.termination_grace_seconds or settings.grace_margin_seconds,
    )
    ref = ex.oci.credentials_secret_ref if ex.oci is not None else None
    if ref is not None:  # optional: a missing Secret is the trainer's sentence, not a stuck pod
        pod["spec"]["volumes"].append(
            {"name": "registry", "secret": {"secretName": ref.name, "optional": True}}
        )
        pod["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "registry", "mountPath": REGISTRY_DIR, "readOnly": True}
        )
    return pod


def train_resources(job: m.FineTuneJob) -> dict[str, Any]:
    res = job.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)
    if res.memory is not None:
        requests["memory"] = limits["memory"] = str(res.memory)
    if res.gpus > 0:
        requests[GPU] = limits[GPU] = str(res.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def train_grace_seconds(job: m.FineTuneJob, settings: Settings) -> int:
    """The admin's fixed grace period, else one derived from the model size the prepare stage
    found and the step time the job reported (docs/contract.md section 5)."""
    if settings.termination_grace_seconds:
        return settings.termination_grace_seconds
    st = job.status
    p = st.progress
    return planner.grace_seconds(
        parameters=st.plan.parameters if st.plan else None,
        method=job.spec.method,
        merge=job.spec.output.merge_adapter,
        step_seconds=planner.step_seconds(p.step, p.total_steps, p.eta_seconds) if p else None,
        write_mib_per_second=settings.grace_write_mib_per_second,
        margin_seconds=settings.grace_margin_seconds,
    )


def distributed_env(job: m.FineTuneJob, attempt: int, node: int) -> dict[str, str]:
    """torchrun's variables for node ``node``, as Kubeflow Trainer v2 sets them (static
    rendezvous: the node count is fixed, node 0 is the master), and the NCCL defaults."""
    return {
        "PET_NNODES": str(job.spec.resources.nodes),
        "PET_NPROC_PER_NODE": str(m.processes_per_node(job.spec)),
        "PET_NODE_RANK": str(node),
        "PET_MASTER_ADDR": master_address(job, attempt),
        "PET_MASTER_PORT": str(MASTER_PORT),
        **NCCL_DEFAULTS,
    }


def train_pod(
    job: m.FineTuneJob, attempt: int, settings: Settings, node: int = 0
) -> dict[str, Any]:
    """The training pod of node ``node`` requesting ``nvidia.com/gpu: N``: ``<job>-<attempt>``
    alone, or ``<job>-<attempt>-node-<i>`` with hostname/subdomain under the headless Service
    and the torchrun variables when ``resources.nodes`` > 1."""
    command = ["finetune-trainer", "train", "--config", CONFIG_PATH]
    several = job.spec.resources.nodes > 1
    pod = _pod(
        job,
        train_pod_name(job, attempt, node),
        role_label="train",
        attempt=attempt,
        command=command,
        resources=train_resources(job),
        settings=settings,
        priority=True,
        grace=train_grace_seconds(job, settings),
        env=distributed_env(job, attempt, node) if several else None,
        labels={LABEL_NODE_RANK: str(node)} if several else None,
    )
    spec = pod["spec"]
    if several:
        spec["hostname"] = train_pod_name(job, attempt, node)
        spec["subdomain"] = nodes_service_name(job)
        spec["containers"][0]["ports"] = [
            {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}
        ]
    # torch.distributed (NCCL, gloo) and dataloaders need more shared memory than the
    # runtime's 64 MiB default (it counts against the memory limit)
    spec["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    spec["containers"][0]["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    group_labels, group_annotations = kueue.group_metadata(job, attempt)
    meta = pod["metadata"]
    meta["labels"] = {**meta["labels"], **group_labels}
    if group_annotations:
        meta["annotations"] = {**meta.get("annotations", {}), **group_annotations}
    return pod


def train_pods(job: m.FineTuneJob, attempt: int, settings: Settings) -> list[dict[str, Any]]:
    """Every pod of a training attempt, node 0 first."""
    return [train_pod(job, attempt, settings, i) for i in range(m.training_pod_count(job.spec))]


def nodes_service(job: m.FineTuneJob) -> dict[str, Any] | None:
    """The headless Service ``<job>-nodes`` giving every training pod a DNS name
    (``<pod>.<job>-nodes``) before it is ready; None for a one-node job."""
    if job.spec.resources.nodes == 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, nodes_service_name(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {m.LABEL_JOB: job.name, m.LABEL_ROLE: "train"},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "protocol": "TCP"}],
        },
    }

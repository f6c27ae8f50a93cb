"""Experiment tracking: TensorBoard event files on the volume, MLflow, Weights & Biases.

The trainer config's ``tracking`` section (from ``spec.tracking``) becomes the ``report_to`` list
of the HF Trainer and the environment its integrations read (``MLFLOW_*``, ``WANDB_*``,
``TENSORBOARD_LOGGING_DIR``). Credentials never pass through the config: the operator maps the
job's Secrets to env (``MLFLOW_TRACKING_TOKEN`` or ``_USERNAME``/``_PASSWORD``,
``WANDB_API_KEY``); here they are only required to be present when the spec says they should be.

A resumed attempt continues the same run: the MLflow run id is recorded on the volume when the
run starts and given back through ``MLFLOW_RUN_ID``; the W&B run id is derived from the job's
UID with ``WANDB_RESUME=allow``. TensorBoard writes live to ``<work>/tensorboard`` (attempts
append event files) and the final output gets a copy (``output/tensorboard``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from finetune_trainer.errors import ConfigError

if TYPE_CHECKING:
    from finetune_trainer.config import TrackingSpec, TrainerConfig

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
RUN_FILE = "tracking/mlflow-run.json"
WANDB_DIR = "tracking"
# hosts a tracking URL may not name: the cloud metadata endpoints (credentials of the node)
FORBIDDEN_HOSTS = ("metadata.google.internal", "metadata")
_CREDENTIAL_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be a tracking server (None when it may): http(s) only, no userinfo
    (credentials come from Secrets), no query or fragment, no link-local/unspecified address or
    metadata host. Loopback is allowed (a sidecar proxy)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if "@" in parts.netloc:
        return "must not hold credentials (put them in a Secret)"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not have a query or fragment"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "has no host"
    del port
    if host in FORBIDDEN_HOSTS:
        return f"names the metadata host {host}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None if re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", host) else "has a bad host"
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return f"names a link-local, unspecified or multicast address ({host})"
    return None


def check_url(url: str, where: str) -> str:
    """``url`` when it may be used; else ValueError naming ``where`` (config validation)."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"{where} {problem}")
    return url


def available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def tensorboard_available() -> bool:
    return available("tensorboard") or available("tensorboardX")


def report_to(spec: TrackingSpec) -> list[str]:
    """The HF Trainer integrations to turn on (a missing TensorBoard writer turns it off with a
    warning: it is on by default; an asked-for MLflow or W&B client that is missing is a
    BadConfig)."""
    out: list[str] = []
    if spec.tensorboard:
        if tensorboard_available():
            out.append("tensorboard")
        else:
            log.warning("TensorBoard is on but neither tensorboardX nor tensorboard is installed")
    for name, package, wanted in (
        ("mlflow", "mlflow", spec.mlflow is not None),
        ("wandb", "wandb", spec.wandb is not None),
    ):
        if wanted:
            if not available(package):
                raise ConfigError(
                    f"spec.tracking.{name} needs the {package} package in the trainer image "
                    f"(pip install {'mlflow-skinny' if name == 'mlflow' else 'wandb'})"
                )
            out.append(name)
    return out


def wandb_run_id(config: TrainerConfig) -> str:
    """A stable W&B run id for the job (every attempt resumes the same run)."""
    raw = f"{config.job.name}-{(config.job.uid or config.job.namespace)[:8]}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:64]


def recorded_run(work: Path) -> str | None:
    """The MLflow run id an earlier attempt recorded."""
    try:
        value = json.loads((work / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) else None


def environment(config: TrainerConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The env the integrations read, from the config (and what is already in ``env``)."""
    t, work = config.tracking, config.work
    out: dict[str, str] = {}
    if t.tensorboard:
        out["TENSORBOARD_LOGGING_DIR"] = str(work / TENSORBOARD_DIR)
    if t.mlflow is not None:
        m = t.mlflow
        if m.credentials and not (
            env.get("MLFLOW_TRACKING_TOKEN")
            or (env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"))
        ):
            raise ConfigError(
                "spec.tracking.mlflow.credentialsSecretRef: the Secret has neither a 'token' key "
                "nor 'username' and 'password' keys (or it does not exist)"
            )
        out["MLFLOW_TRACKING_URI"] = m.tracking_uri
        out["MLFLOW_EXPERIMENT_NAME"] = m.experiment or config.job.name
        out["MLFLOW_TAGS"] = json.dumps(
            {"finetune.dev/job": config.job.name, "finetune.dev/namespace": config.job.namespace}
        )
        out["HF_MLFLOW_LOG_ARTIFACTS"] = "FALSE"  # the output stays on the volume
        run = recorded_run(work)
        if run is not None:
            out["MLFLOW_RUN_ID"] = run
    if t.wandb is not None:
        w = t.wandb
        if w.mode == "online" and not env.get("WANDB_API_KEY"):
            raise ConfigError(
                "spec.tracking.wandb.apiKeySecretRef: no API key (the Secret or its key does "
                "not exist); online mode needs one"
            )
        out |= {
            "WANDB_PROJECT": w.project,
            "WANDB_MODE": w.mode,
            "WANDB_DIR": str(work / WANDB_DIR),
            "WANDB_RUN_ID": wandb_run_id(config),
            "WANDB_RESUME": "allow",
            "WANDB_LOG_MODEL": "false",
            "WANDB_WATCH": "false",
            "WANDB_SILENT": "true",
        }
        if w.entity:
            out["WANDB_ENTITY"] = w.entity
        if w.base_url:
            out["WANDB_BASE_URL"] = w.base_url
    return out


def setup(config: TrainerConfig) -> list[str]:
    """Set the environment and return ``report_to`` (call before building the Trainer)."""
    env = environment(config, os.environ)
    if "WANDB_DIR" in env:
        Path(env["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    reports = report_to(config.tracking)
    log.info("tracking: %s", ", ".join(reports) or "off")
    return reports


def record_mlflow_run(work: Path) -> str | None:
    """Write the active MLflow run's id to the volume (the next attempt resumes it)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    path = work / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run.info.run_id}))
    os.replace(tmp, path)
    return str(run.info.run_id)


def run_recorder(work: Path, reports: list[str]) -> Any:
    """A TrainerCallback (after the MLflow integration's) recording the run id at train begin;
    it does nothing unless MLflow is one of ``reports`` (an image without the mlflow package
    trains as long as MLflow is not asked for: the GPU tier found every run failing on it)."""
    from transformers import TrainerCallback

    on = "mlflow" in reports

    class RunRecorder(TrainerCallback):  # type: ignore[misc]
        run_id: str | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if on and state.is_world_process_zero:
                self.run_id = record_mlflow_run(work)

    return RunRecorder()


def copy_into(config: TrainerConfig, staging: Path) -> None:
    """Copy the TensorBoard event files into the staged output."""
    source = config.work / TENSORBOARD_DIR
    if config.tracking.tensorboard and source.is_dir():
        shutil.copytree(source, staging / TENSORBOARD_DIR, dirs_exist_ok=True)


def summary(config: TrainerConfig, reports: list[str], mlflow_run: str | None) -> dict[str, Any]:
    """What summary.json says about tracking."""
    t = config.tracking
    return {
        "report_to": reports,
        "tensorboard": f"output/{TENSORBOARD_DIR}" if "tensorboard" in reports else None,
        "mlflow_run_id": mlflow_run,
        "wandb_run_id": wandb_run_id(config) if t.wandb is not None else None,
    }


__all__ = ["check_url", "copy_into", "environment", "report_to", "setup", "url_problem"]

"""Pure: what spec.tracking and spec.dataset.chatTemplate add to the trainer config and the pods.

Tracking credentials reach the trainer only as env from the job's Secrets (``secretKeyRef``,
``optional`` so a missing Secret does not leave the pod stuck in CreateContainerConfigError: the
trainer then fails with reason BadConfig naming the field). A chat template from a ConfigMap is
mounted read-only as a file (also optional, same reason). Called by builders.py.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import models as m

CHAT_TEMPLATE_DIR = "/etc/finetune/chat-template"
# Secret key -> env var the MLflow client reads
MLFLOW_CREDENTIAL_KEYS = {
    "token": "MLFLOW_TRACKING_TOKEN",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}


def chat_template_config(ds: m.DatasetSource) -> dict[str, Any] | None:
    """``dataset.chat_template`` of the trainer config."""
    t = ds.chat_template
    if t is None:
        return None
    if t.config_map is not None:
        return {"file": f"{CHAT_TEMPLATE_DIR}/{t.config_map.key}"}
    if t.name is not None:
        return {"name": t.name}
    return {"template": t.template}


def tracking_config(spec: m.FineTuneJobSpec) -> dict[str, Any]:
    """``tracking`` of the trainer config (no credentials: those are env from Secrets)."""
    t = spec.tracking
    out: dict[str, Any] = {"tensorboard": t.tensorboard, "mlflow": None, "wandb": None}
    if t.mlflow is not None:
        out["mlflow"] = {
            "tracking_uri": t.mlflow.tracking_uri,
            "experiment": t.mlflow.experiment,
            "credentials": t.mlflow.credentials_secret_ref is not None,
        }
    if t.wandb is not None:
        w = t.wandb
        out["wandb"] = {
            "project": w.project,
            "entity": w.entity,
            "mode": w.mode,
            "base_url": w.base_url,
        }
    return out


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
    }


def env(spec: m.FineTuneJobSpec) -> list[dict[str, Any]]:
    """Credential env of the trainer container (the Secret values never enter the config)."""
    t = spec.tracking
    out: list[dict[str, Any]] = []
    if t.mlflow is not None and t.mlflow.credentials_secret_ref is not None:
        secret = t.mlflow.credentials_secret_ref.name
        out += [_secret_env(var, secret, key) for key, var in MLFLOW_CREDENTIAL_KEYS.items()]
    if t.wandb is not None and t.wandb.api_key_secret_ref is not None:
        ref = t.wandb.api_key_secret_ref
        out.append(_secret_env("WANDB_API_KEY", ref.name, ref.key))
    return out


def volumes(spec: m.FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for a chat template kept in a ConfigMap."""
    t = spec.dataset.chat_template
    if t is None or t.config_map is None:
        return [], []
    ref = t.config_map
    volume = {
        "name": "chat-template",
        "configMap": {
            "name": ref.name,
            "items": [{"key": ref.key, "path": ref.key}],
            "optional": True,
        },
    }
    mount = {"name": "chat-template", "mountPath": CHAT_TEMPLATE_DIR, "readOnly": True}
    return [volume], [mount]


def secret_names(spec: m.FineTuneJobSpec) -> list[str]:
    """The Secrets spec.tracking makes the pods read."""
    t = spec.tracking
    names = []
    if t.mlflow is not None and t.mlflow.credentials_secret_ref is not None:
        names.append(t.mlflow.credentials_secret_ref.name)
    if t.wandb is not None and t.wandb.api_key_secret_ref is not None:
        names.append(t.wandb.api_key_secret_ref.name)
    return names


__all__ = ["chat_template_config", "env", "tracking_config", "volumes"]

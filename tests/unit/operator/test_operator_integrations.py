"""spec.tracking and spec.dataset.chatTemplate: CEL at the door, the trainer config (accepted by
the trainer), the pod's credential env and template volume, the admission policy's checks."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import builders, policy, security
from finetune_operator import models as m
from finetune_operator.settings import Settings
from finetune_trainer import config as trainer_config
from finetune_trainer import tracking as trainer_tracking
from tests.unit.operator.test_operator_crd import cel_errors

BASE: dict[str, Any] = {
    "model": {"name": "org/m"},
    "dataset": {"pvc": "data", "path": "t.jsonl", "format": "messages"},
    "training": {"maxSteps": 10, "batchSize": 8},
    "output": {"pvc": "out"},
}


def spec(**overrides: Any) -> dict[str, Any]:
    out = {**BASE, **overrides}
    if "dataset" in overrides:
        out["dataset"] = {**BASE["dataset"], **overrides["dataset"]}
    return out


def job(**overrides: Any) -> m.FineTuneJob:
    return m.parse_job(
        {"metadata": {"name": "bot", "namespace": "ml", "uid": "u-1"}, "spec": spec(**overrides)}
    )


URL_SHAPE = (
    "tracking.mlflow.trackingUri must be http(s)://host[:port][/path], without credentials (use "
    "the Secret), query or fragment"
)
URL_HOST = (
    "tracking.mlflow.trackingUri must not name a link-local, unspecified or cloud metadata address"
)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://mlflow.mlflow:5000", None),
        ("https://mlflow.example.com/prefix/", None),
        ("http://127.0.0.1:5000", None),
        ("http://[2001:db8::1]:5000", None),
        ("file:///tmp/mlruns", URL_SHAPE),
        ("sqlite:///x.db", URL_SHAPE),
        ("https://user:pw@mlflow.example.com", URL_SHAPE),
        ("https://mlflow.example.com?x=1", URL_SHAPE),
        ("https://mlflow.example.com/#f", URL_SHAPE),
        ("http://169.254.169.254/latest", URL_HOST),
        ("http://[fe80::1]:80", URL_HOST),
        ("http://0.0.0.0:5000", URL_HOST),
        ("http://metadata.google.internal/computeMetadata", URL_HOST),
        ("http://METADATA/", URL_HOST),
    ],
)
def test_tracking_uri_rules_agree_with_the_trainer(uri: str, message: str | None) -> None:
    errors = cel_errors(spec(tracking={"mlflow": {"trackingUri": uri}}))
    assert errors == ([message] if message else [])
    # the trainer refuses at least what the door refuses
    assert (trainer_tracking.url_problem(uri) is None) == (message is None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": {"chatTemplate": {"name": "chatml"}}}, None),
        ({"dataset": {"format": "alpaca", "chatTemplate": {"configMap": {"name": "t"}}}}, None),
        (
            {"dataset": {"chatTemplate": {"name": "chatml", "template": "x"}}},
            "dataset.chatTemplate: set exactly one of name, template or configMap",
        ),
        ({"dataset": {"chatTemplate": {}}}, "dataset.chatTemplate: set exactly one of name, "
         "template or configMap"),
        (
            {"dataset": {"format": "text", "chatTemplate": {"name": "chatml"}}},
            "dataset.chatTemplate applies to formats alpaca, sharegpt and messages",
        ),
        (
            {"dataset": {"chatTemplate": {"configMap": {"name": "t", "key": "../x"}}}},
            "dataset.chatTemplate.configMap.key must match ^[-._a-zA-Z0-9]+$ and must not "
            "contain '..' (no absolute or parent paths)",
        ),
        ({"tracking": {"wandb": {"project": "p", "mode": "online"}}},
         "tracking.wandb.mode online needs apiKeySecretRef"),
        ({"tracking": {"wandb": {"project": "p", "baseUrl": "http://169.254.169.254"}}},
         "tracking.wandb.baseUrl must not name a link-local, unspecified or cloud metadata "
         "address"),
    ],
)  # fmt: skip
def test_rules(overrides: dict[str, Any], message: str | None) -> None:
    assert cel_errors(spec(**overrides)) == ([message] if message else [])


def test_default_is_tensorboard_only() -> None:
    config = builders.trainer_config(job(), 1, None, None, Settings())
    assert config["tracking"] == {"tensorboard": True, "mlflow": None, "wandb": None}
    assert config["dataset"]["chat_template"] is None
    pod = builders.train_pod(job(), 1, Settings())
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert not [n for n in names if n.startswith(("MLFLOW", "WANDB"))]


def test_tracking_credentials_are_env_from_secrets_never_config() -> None:
    j = job(
        tracking={
            "tensorboard": False,
            "mlflow": {
                "trackingUri": "https://mlflow.example.com",
                "experiment": "bots",
                "credentialsSecretRef": {"name": "mlflow-creds"},
            },
            "wandb": {"project": "p", "mode": "online", "apiKeySecretRef": {"name": "wb"}},
        }
    )
    config = builders.trainer_config(j, 1, None, None, Settings())
    assert config["tracking"] == {
        "tensorboard": False,
        "mlflow": {
            "tracking_uri": "https://mlflow.example.com",
            "experiment": "bots",
            "credentials": True,
        },
        "wandb": {"project": "p", "entity": None, "mode": "online", "base_url": None},
    }
    parsed = trainer_config.parse_config(config)  # the trainer accepts what the operator writes
    assert parsed.tracking.mlflow is not None and parsed.tracking.mlflow.credentials
    for pod in (builders.train_pod(j, 1, Settings()), builders.prepare_pod(j, Settings())):
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_TOKEN"] == {
            "name": "MLFLOW_TRACKING_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": "mlflow-creds", "key": "token", "optional": True}
            },
        }
        assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
        assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "wb",
            "key": "token",
            "optional": True,
        }
    assert "mlflow-creds" not in str(config) and "wb" not in str(config["tracking"])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ({"name": "llama3"}, {"name": "llama3"}),
        ({"template": "{{ x }}"}, {"template": "{{ x }}"}),
        ({"configMap": {"name": "tpl"}},
         {"file": "/etc/finetune/chat-template/chat_template.jinja"}),
    ],
)  # fmt: skip
def test_chat_template_config(template: dict[str, Any], expected: dict[str, str]) -> None:
    j = job(dataset={"chatTemplate": template})
    config = builders.trainer_config(j, 1, None, None, Settings())
    assert config["dataset"]["chat_template"] == expected
    trainer_config.parse_config(config)


def test_chat_template_configmap_is_mounted_read_only_in_both_pods() -> None:
    j = job(dataset={"chatTemplate": {"configMap": {"name": "tpl", "key": "t.jinja"}}})
    for pod in (builders.train_pod(j, 1, Settings()), builders.prepare_pod(j, Settings())):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["chat-template"]["configMap"] == {
            "name": "tpl",
            "items": [{"key": "t.jinja", "path": "t.jinja"}],
            "optional": True,
        }
        mounts = {v["name"]: v for v in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["chat-template"] == {
            "name": "chat-template",
            "mountPath": "/etc/finetune/chat-template",
            "readOnly": True,
        }


def test_operator_refuses_an_escaping_template_key() -> None:
    j = job(dataset={"chatTemplate": {"configMap": {"name": "tpl", "key": "../x"}}})
    found = security.violations(j, security.allowlists(Settings()))
    assert found == ["spec.dataset.chatTemplate.configMap.key '../x' must be relative and must "
                     "not contain '..'"]  # fmt: skip


def test_policy_asks_the_authors_right_to_read_each_referenced_object() -> None:
    text = "\n".join(v["expression"] for v in policy.policy_spec()["validations"])
    for needle in (
        "?tracking.?mlflow.?credentialsSecretRef.?name",
        "?tracking.?wandb.?apiKeySecretRef.?name",
        "dataset.?chatTemplate.?configMap.?name",
    ):
        assert needle in text, needle
    messages = "\n".join(v["messageExpression"] for v in policy.policy_spec()["validations"])
    assert "spec.tracking.wandb.apiKeySecretRef: " in messages

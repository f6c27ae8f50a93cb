"""policy.py: the admission policy covers every field that reaches a pod, and its binding and
parameters carry what the chart's values say (the CEL itself runs in the integration tier)."""

from __future__ import annotations

from finetune_operator import models as m
from finetune_operator import policy, security

# podTemplate fields the policy does not check, and why (docs/security.md says the same): none
UNCHECKED: dict[str, str] = {}


def _text() -> str:
    return "\n".join(v["expression"] for v in policy.policy_spec()["validations"])


def test_every_pod_template_field_is_checked_or_listed_as_harmless() -> None:
    text = _text()
    fields = {f.alias or f_name for f_name, f in m.PodTemplate.model_fields.items()}
    unchecked = {f for f in fields if f"podTemplate.?{f}" not in text}
    assert unchecked == set(UNCHECKED), unchecked ^ set(UNCHECKED)


def test_every_spec_field_that_reaches_a_pod_is_checked() -> None:
    text = _text()
    for needle in ("spec.?image", "?hubTokenSecretRef", "?trustRemoteCode", "dataset.?configMap",
                   "model.?pvc", "dataset.?pvc", "output.?pvc", "?cache.?pvc"):  # fmt: skip
        assert needle in text, needle


def test_each_check_applies_only_when_its_field_changed_on_update() -> None:
    for validation in policy.policy_spec()["validations"]:
        head = validation["expression"].split(" || ", 1)[0]
        assert head.startswith("(request.operation == 'UPDATE' && ") and "oldObject" in head


def test_binding_and_variables() -> None:
    assert policy.build_binding(["ml"], name="x")["spec"]["matchResources"]
    assert "matchResources" not in policy.build_binding(None)["spec"]
    allow = security.Allowlists(images=("a", "b*"), toleration_keys=("nvidia.com/gpu",))
    variables = {v["name"]: v["expression"] for v in policy.allowlist_variables(allow)}
    assert variables == {
        "allowedImages": '["a","b*"]',
        "allowedVolumeTypes": "[" + ",".join(f'"{t}"' for t in security.DEFAULT_VOLUME_TYPES) + "]",
        "allowedPriorityClasses": "[]",
        "allowedTolerationKeys": '["nvidia.com/gpu"]',
        "allowedNodeLabelKeys": "["
        + ",".join(f'"{k}"' for k in security.DEFAULT_NODE_LABEL_KEYS)
        + "]",
        "allowTrustRemoteCode": "false",
    }
    assert "paramKind" not in policy.build_policy(allow)["spec"]

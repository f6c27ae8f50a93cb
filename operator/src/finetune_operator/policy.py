"""The ValidatingAdmissionPolicy that makes a FineTuneJob grant nothing its author lacks.

Generated (``make generate``) into the chart and the kustomize install; no webhook server: the
kube-apiserver (>= 1.30) evaluates the CEL itself. Each check names a field that widens what the
job's pods can do and either asks the *requesting user's* rights (CEL ``authorizer``: a custom
image or ServiceAccount needs ``create pods``, every Secret/ConfigMap/PVC a pod would mount or
read needs ``get`` on it) or an admin allowlist (images, volume types, priority classes,
toleration keys, trustRemoteCode; reserved label/annotation prefixes are refused). The allowlists
are the policy's variables, rendered by the chart from its ``policy`` values (the same values the
operator enforces through ``security.py``).

A check applies on CREATE, and on UPDATE only when its field changed: the operator's own patches
(finalizer, annotations) and a colleague's suspend never need the author's rights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from finetune_operator import models as m
from finetune_operator import security

POLICY_NAME = "finetunejobs.finetune.dev"
# names of the policy's variables holding the allowlists (charts/.../values.yaml policy.*)
PARAM_IMAGES = "allowedImages"
PARAM_VOLUME_TYPES = "allowedVolumeTypes"
PARAM_PRIORITY_CLASSES = "allowedPriorityClasses"
PARAM_TOLERATION_KEYS = "allowedTolerationKeys"
PARAM_NODE_LABEL_KEYS = "allowedNodeLabelKeys"
PARAM_TRUST_REMOTE_CODE = "allowTrustRemoteCode"

_TPL = "{o}.spec.?podTemplate"
_USER = "request.userInfo.username"
_NS = "request.namespace"


def _list_param(key: str) -> str:
    return f"variables.{key}"


@dataclass(frozen=True)
class Check:
    """One validation: ``field`` (a CEL expression over ``{o}``, the object) is what it looks at;
    ``rule`` (over ``variables.v``, that field's new value) must hold; ``message`` is a CEL
    string expression (may use ``variables.v``)."""

    name: str
    field: str
    rule: str
    message: str
    forbidden: bool  # a missing right (403 Forbidden) rather than an invalid value (422)

    def validation(self) -> dict[str, str]:
        new, old = self.field.replace("{o}", "object"), self.field.replace("{o}", "oldObject")
        rule = self.rule.replace("variables.v", f"({new})").replace("{o}", "object")
        message = self.message.replace("variables.v", f"({new})").replace("{o}", "object")
        return {
            "expression": (f"(request.operation == 'UPDATE' && ({old}) == ({new})) || ({rule})"),
            "messageExpression": message,
            "reason": "Forbidden" if self.forbidden else "Invalid",
        }


def _can(verb: str, resource: str, name: str | None = None) -> str:
    check = f"authorizer.group('').resource('{resource}').namespace({_NS})"
    if name is not None:
        check += f".name({name})"
    return f"{check}.check('{verb}').allowed()"


def _who(verb: str, resource: str) -> str:
    return f"{_USER} + ' may not {verb} {resource} in namespace ' + {_NS}"


# (field, resource, CEL list of the names referenced there)
_REFERENCES: list[tuple[str, str, str]] = [
    ("spec.hubTokenSecretRef", "secrets", "{o}.spec.?hubTokenSecretRef.?name.orValue('')"),
    (
        "spec.tracking.mlflow.credentialsSecretRef",
        "secrets",
        "{o}.spec.?tracking.?mlflow.?credentialsSecretRef.?name.orValue('')",
    ),
    (
        "spec.tracking.wandb.apiKeySecretRef",
        "secrets",
        "{o}.spec.?tracking.?wandb.?apiKeySecretRef.?name.orValue('')",
    ),
    (
        "spec.output.export.oci.credentialsSecretRef",
        "secrets",
        "{o}.spec.output.?export.?oci.?credentialsSecretRef.?name.orValue('')",
    ),
    (
        "spec.podTemplate.env (valueFrom.secretKeyRef)",
        "secrets",
        _TPL + ".?env.orValue([]).filter(e, has(e.valueFrom) && has(e.valueFrom.secretKeyRef))"
        ".map(e, e.valueFrom.secretKeyRef.name)",
    ),
    (
        "spec.podTemplate.volumes (secret)",
        "secrets",
        _TPL + ".?volumes.orValue([]).filter(v, has(v.secret)).map(v, v.secret.secretName)",
    ),
    (
        "spec.podTemplate.volumes (projected secret)",
        "secrets",
        _TPL + ".?volumes.orValue([]).filter(v, has(v.projected) && "
        "v.projected.?sources.orValue([]).exists(s, has(s.secret))).map(v, "
        "v.projected.sources.filter(s, has(s.secret)).map(s, s.secret.name).join(','))",
    ),
    ("spec.dataset.configMap", "configmaps", "{o}.spec.dataset.?configMap.?name.orValue('')"),
    (
        "spec.dataset.chatTemplate.configMap",
        "configmaps",
        "{o}.spec.dataset.?chatTemplate.?configMap.?name.orValue('')",
    ),
    (
        "spec.podTemplate.env (valueFrom.configMapKeyRef)",
        "configmaps",
        _TPL + ".?env.orValue([]).filter(e, has(e.valueFrom) && has(e.valueFrom.configMapKeyRef))"
        ".map(e, e.valueFrom.configMapKeyRef.name)",
    ),
    (
        "spec.podTemplate.volumes (configMap)",
        "configmaps",
        _TPL + ".?volumes.orValue([]).filter(v, has(v.configMap)).map(v, v.configMap.name)",
    ),
    # one validation per field: an authorizer check costs 350,000 of the 1,000,000 a CEL expression
    # may spend, so one expression over all four claims failed with "actual cost limit exceeded"
    ("spec.model.pvc", "persistentvolumeclaims", "{o}.spec.model.?pvc.orValue('')"),
    ("spec.dataset.pvc", "persistentvolumeclaims", "{o}.spec.dataset.?pvc.orValue('')"),
    ("spec.output.pvc", "persistentvolumeclaims", "{o}.spec.output.?pvc.orValue('')"),
    ("spec.cache.pvc", "persistentvolumeclaims", "{o}.spec.?cache.?pvc.orValue('')"),
    (
        "spec.podTemplate.volumes (persistentVolumeClaim)",
        "persistentvolumeclaims",
        _TPL + ".?volumes.orValue([]).filter(v, has(v.persistentVolumeClaim))"
        ".map(v, v.persistentVolumeClaim.claimName)",
    ),
]


def _reference_check(field: str, resource: str, names: str) -> Check:
    # a single name is a string ('' = unset); lists are lists; a projected volume joins its names
    listed = names if not names.endswith(".orValue('')") else f"[{names}]"
    # names joined by ',' (projected volumes) are split back
    # the namespace-wide right first (one check, the usual case); only without it each name is
    # asked (resourceNames-scoped Roles), within the expression's cost budget of about two checks
    every = (
        "variables.v.map(n, n.split(',')).all(ns, ns.all(n, n == '')) || "
        + _can("get", resource)
        + " || variables.v.map(n, n.split(',')).all(ns, ns.all(n, n == '' || "
        + _can("get", resource, "n")
        + "))"
    )
    # messageExpression has no ``authorizer``: name every referenced object, not just the denied
    named = "variables.v.filter(n, n != '').join(', ')"
    singular = resource.removesuffix("s")
    message = (
        f"'{field}: ' + {_who('get', resource)} + ' (named: ' + {named} + '); a job can only "
        f"use the {resource} its author may read: ask for a Role granting get on {resource} "
        f"(resourceNames: the {singular} named), or leave the field out'"
    )
    return Check(f"get-{resource}", listed, every, message, forbidden=True)


def _key_ok(key_expr: str) -> str:
    domains = " || ".join(f"p == '{d}' || p.endsWith('.{d}')" for d in security.RESERVED_DOMAINS)
    words = " || ".join(f"p.contains('{w}')" for w in security.RESERVED_WORDS)
    exceptions = " || ".join(f"{key_expr} == '{k}'" for k in security.RESERVED_EXCEPTIONS)
    return (
        f"{exceptions} || !{key_expr}.contains('/') || "
        f"[{key_expr}.split('/')[0]].all(p, !({domains} || {words}))"
    )


_OWN_VOLUME = _TPL + ".?volumes.orValue([]).exists(v, v.name == m.name)"
_NODE_KEYS = _list_param(PARAM_NODE_LABEL_KEYS)
_TERM_OK = (
    f"{{t}}.?matchExpressions.orValue([]).all(e, e.key in {_NODE_KEYS}) && "
    f"{{t}}.?matchFields.orValue([]).all(e, e.key in {_NODE_KEYS})"
)
_AFFINITY_OK = (
    "variables.v.?nodeAffinity.?requiredDuringSchedulingIgnoredDuringExecution"
    ".?nodeSelectorTerms.orValue([]).all(t, " + _TERM_OK.format(t="t") + ") && "
    "variables.v.?nodeAffinity.?preferredDuringSchedulingIgnoredDuringExecution.orValue([])"
    ".all(p, " + _TERM_OK.format(t="p.?preference.orValue({})") + ")"
)


def checks() -> list[Check]:
    """Every validation of the policy, in order: the apiserver reports the first that fails
    (an allowlist before a right: no right helps against the former)."""
    admin = "ask the cluster admin to add it to the chart value"
    image_allowed = (
        f"{_list_param(PARAM_IMAGES)}.exists(p, p == '*' || p == variables.v || "
        "(p.endsWith('*') && variables.v.startsWith(p.substring(0, size(p) - 1))))"
    )
    out = [
        Check(
            "image-allowlist",
            "{o}.spec.?image.orValue('')",
            f"variables.v == '' || {image_allowed}",
            f"'spec.image: ' + variables.v + ' is not in the allowed images; {admin} "
            "policy.allowedImages, or leave spec.image unset'",
            forbidden=False,
        ),
        Check(
            "image-rights",
            "{o}.spec.?image.orValue('')",
            f"variables.v == '' || {_can('create', 'pods')}",
            f"'spec.image: ' + {_who('create', 'pods')} + '; a custom trainer image runs "
            "whatever its author chose, so it needs that right (ask for a Role granting create "
            "on pods) - or leave spec.image unset to use the operator\\'s trainer image'",
            forbidden=True,
        ),
        Check(
            "service-account",
            _TPL + ".?serviceAccountName.orValue('')",
            f"variables.v == '' || {_can('create', 'pods')}",
            f"'spec.podTemplate.serviceAccountName: ' + {_who('create', 'pods')} + '; running "
            "as another ServiceAccount uses its rights, so it needs that right (ask for a Role "
            "granting create on pods) - or leave it unset for the per-job account'",
            forbidden=True,
        ),
        *(_reference_check(f, r, n) for f, r, n in _REFERENCES),
        Check(
            "volume-types",
            _TPL + ".?volumes.orValue([])",
            f"variables.v.all(v, v.all(k, k == 'name' || k in {_list_param(PARAM_VOLUME_TYPES)}"
            " || '*' in " + _list_param(PARAM_VOLUME_TYPES) + "))",
            "'spec.podTemplate.volumes: volume ' + variables.v.filter(v, !v.all(k, k == 'name' "
            f"|| k in {_list_param(PARAM_VOLUME_TYPES)} || '*' in "
            f"{_list_param(PARAM_VOLUME_TYPES)})).map(v, v.?name.orValue('?')).join(', ') + "
            "' has a type outside the allowed volume types (' + "
            f"{_list_param(PARAM_VOLUME_TYPES)}.join(', ') + '); hostPath and other node or "
            "network volumes need the cluster admin to add their type to the chart value "
            "policy.allowedVolumeTypes'",
            forbidden=False,
        ),
        *(
            Check(
                f"reserved-{what}",
                _TPL + f".?{what}.orValue({{}})",
                f"variables.v.all(k, {_key_ok('k')})",
                f"'spec.podTemplate.{what}: ' + variables.v.filter(k, !({_key_ok('k')}))"
                ".join(', ') + ' uses a reserved prefix (kubernetes.io, k8s.io, x-k8s.io, "
                f"{m.GROUP}, apparmor, seccomp; only kueue.x-k8s.io/queue-name is allowed); "
                "the platform and the operator own these keys'",
                forbidden=False,
            )
            for what in ("labels", "annotations")
        ),
        Check(
            "priority-class",
            _TPL + ".?priorityClassName.orValue('')",
            f"variables.v == '' || variables.v in {_list_param(PARAM_PRIORITY_CLASSES)} || "
            f"'*' in {_list_param(PARAM_PRIORITY_CLASSES)}",
            "'spec.podTemplate.priorityClassName: ' + variables.v + ' is not in the allowed "
            f"priority classes; {admin} policy.allowedPriorityClasses'",
            forbidden=False,
        ),
        Check(
            "tolerations",
            _TPL + ".?tolerations.orValue([])",
            f"'*' in {_list_param(PARAM_TOLERATION_KEYS)} || variables.v.all(t, has(t.key) && "
            f"t.key in {_list_param(PARAM_TOLERATION_KEYS)})",
            "'spec.podTemplate.tolerations: key ' + variables.v.filter(t, !has(t.key) || !(t.key "
            f"in {_list_param(PARAM_TOLERATION_KEYS)})).map(t, t.?key.orValue('(any)'))"
            ".join(', ') + ' is not in the allowed toleration keys (a toleration lets pods onto "
            f"nodes kept for others); {admin} policy.allowedTolerationKeys'",
            forbidden=False,
        ),
        Check(
            "volume-mounts",
            _TPL + ".?volumeMounts.orValue([])",
            f"variables.v.all(m, {_OWN_VOLUME})",
            "'spec.podTemplate.volumeMounts: ' + variables.v.filter(m, !("
            + _OWN_VOLUME
            + ")).map(m, m.name).join(', ') + ' is not a volume of spec.podTemplate.volumes; "
            "only those may be mounted (the operator\\'s own volumes, e.g. the shared model "
            "cache, keep their read-only mounts)'",
            forbidden=False,
        ),
        Check(
            "node-selector",
            _TPL + ".?nodeSelector.orValue({})",
            f"'*' in {_NODE_KEYS} || variables.v.all(k, k in {_NODE_KEYS})",
            "'spec.podTemplate.nodeSelector: node label ' + variables.v.filter(k, !(k in "
            f"{_NODE_KEYS})).join(', ') + ' is not in the allowed node labels (' + "
            f"{_NODE_KEYS}.join(', ') + '); a label can steer pods onto nodes kept for others: "
            f"{admin} policy.allowedNodeLabelKeys'",
            forbidden=False,
        ),
        Check(
            "affinity",
            _TPL + ".?affinity.orValue({})",
            f"'*' in {_NODE_KEYS} || (variables.v.all(k, k == 'nodeAffinity') && {_AFFINITY_OK})",
            "'spec.podTemplate.affinity: only nodeAffinity on the allowed node labels (' + "
            f"{_NODE_KEYS}.join(', ') + ') may be set; pod (anti-)affinity and other node "
            "labels or fields place pods on nodes or next to pods kept for others: "
            f"{admin} policy.allowedNodeLabelKeys'",
            forbidden=False,
        ),
        Check(
            "trust-remote-code",
            "{o}.spec.model.?trustRemoteCode.orValue(false)",
            f"!variables.v || variables.{PARAM_TRUST_REMOTE_CODE}",
            "'spec.model.trustRemoteCode: running the model\\'s own Python code from the hub is "
            "turned off; ask the cluster admin to set the chart value "
            "policy.allowTrustRemoteCode: true, or leave it false'",
            forbidden=False,
        ),
    ]
    return out


def allowlist_variables(allow: security.Allowlists) -> list[dict[str, str]]:
    """The admin's allowlists as the policy's CEL variables (JSON lists are CEL list literals).
    The chart renders the same six from its ``policy`` values."""
    lists = {
        PARAM_IMAGES: allow.images,
        PARAM_VOLUME_TYPES: allow.volume_types,
        PARAM_PRIORITY_CLASSES: allow.priority_classes,
        PARAM_TOLERATION_KEYS: allow.toleration_keys,
        PARAM_NODE_LABEL_KEYS: allow.node_label_keys,
    }
    out = [
        {"name": k, "expression": json.dumps(list(v), separators=(",", ":"))}
        for k, v in lists.items()
    ]
    out.append({"name": PARAM_TRUST_REMOTE_CODE, "expression": json.dumps(allow.trust_remote_code)})
    return out


def build_policy(allow: security.Allowlists, name: str = POLICY_NAME) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy with ``allow`` rendered into its variables."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "finetune-operator"}},
        "spec": {"variables": allowlist_variables(allow), **policy_spec()},
    }


def policy_spec() -> dict[str, Any]:
    """The spec without its variables (the chart's template adds them from its values).

    No ``paramKind``: values rendered into the policy need no parameter object, and a policy
    re-created next to another with the same paramKind was seen (kube-apiserver 1.35) to answer
    "no params found" for every request until the apiserver restarted."""
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [m.GROUP],
                    "apiVersions": [m.VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [m.PLURAL],
                }
            ]
        },
        "validations": [c.validation() for c in checks()],
    }


def build_binding(namespaces: list[str] | None, name: str = POLICY_NAME) -> dict[str, Any]:
    """The binding: deny on failure, only in ``namespaces`` (None = every namespace)."""
    spec: dict[str, Any] = {"policyName": name, "validationActions": ["Deny"]}
    if namespaces is not None:
        spec["matchResources"] = {
            "namespaceSelector": {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": list(namespaces),
                    }
                ]
            }
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "finetune-operator"}},
        "spec": spec,
    }

"""The CustomResourceDefinition and the operator's ClusterRole, generated from code.

``build_crd()`` turns the pydantic models of ``models.py`` into a structural OpenAPI v3 schema:
``$defs`` inlined, ``Optional`` unwrapped, pydantic's JSON-Schema dialect translated to what the
apiserver accepts (``const`` → ``enum``, numeric ``exclusiveMinimum`` → boolean, free-form objects →
``x-kubernetes-preserve-unknown-fields``, ``int | str`` → ``x-kubernetes-int-or-string``), plus the
CEL rules the models carry, printer columns, the status subresource and the short name.
``build_cluster_role()`` renders the one list of permissions the operator needs.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from finetune_operator import models as m

Schema = dict[str, Any]

# Object-valued spec fields whose every member has a default: defaulting them to their model's
# defaults makes the apiserver fill them in (visible in ``kubectl get -o yaml`` and to CEL rules).
_DEFAULT_OBJECTS: dict[str, type[BaseModel]] = {
    "resources": m.Resources,
    "checkpoint": m.CheckpointSettings,
    "cache": m.CacheSettings,
    "retry": m.RetrySettings,
}

_DROP_KEYS = ("title",)


def _inline(node: Any, defs: dict[str, Schema]) -> Any:
    """Replace every ``$ref`` by a copy of its definition (sibling keys win)."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**_inline(copy.deepcopy(target), defs)}
        for key, value in node.items():
            if key != "$ref":
                merged[key] = _inline(value, defs)
        return merged
    return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _structural(node: Any) -> Any:
    """Translate pydantic's JSON Schema into a Kubernetes structural schema."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in _DROP_KEYS:
        node.pop(key, None)
    if "default" in node and node["default"] is None:
        del node["default"]
    any_of = node.get("anyOf")
    if isinstance(any_of, list):
        options = [opt for opt in any_of if not _is_null(opt)]
        types = sorted(str(opt.get("type")) for opt in options)
        if types == ["integer", "string"] and all(len(opt) == 1 for opt in options):
            del node["anyOf"]
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif len(options) == 1:
            del node["anyOf"]
            node = {**options[0], **node}
    for key in _DROP_KEYS:
        node.pop(key, None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
        node.get("exclusiveMinimum"), bool
    ):
        node["minimum"] = node["exclusiveMinimum"]
        node["exclusiveMinimum"] = True
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(
        node.get("exclusiveMaximum"), bool
    ):
        node["maximum"] = node["exclusiveMaximum"]
        node["exclusiveMaximum"] = True
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "maxLength" in node and node.get("type") == "array":
        node["maxItems"] = node.pop("maxLength")
    if "minLength" in node and node.get("type") == "array":
        node["minItems"] = node.pop("minLength")
    if "maxLength" in node and node.get("type") == "object":
        node["maxProperties"] = node.pop("maxLength")
    out: Schema = {}
    for key, value in node.items():
        if key in ("properties",):
            out[key] = {name: _structural(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "anyOf"):
            out[key] = _structural(value)
        else:
            out[key] = value
    return _ordered(out)


_ORDER = ("description", "type", "format", "enum", "default")


def _ordered(node: Schema) -> Schema:
    """Stable, readable key order: description and type first, properties and rules last."""
    head = {k: node[k] for k in _ORDER if k in node}
    tail_keys = (
        "required",
        "properties",
        "items",
        "additionalProperties",
        "x-kubernetes-validations",
    )
    middle = {k: v for k, v in node.items() if k not in head and k not in tail_keys}
    tail = {k: node[k] for k in tail_keys if k in node}
    return {**head, **middle, **tail}


def model_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of one pydantic model (``$defs`` inlined)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: Schema = _structural(_inline(raw, defs))
    return schema


def spec_schema() -> Schema:
    schema = model_schema(m.FineTuneJobSpec)
    for name, model in _DEFAULT_OBJECTS.items():
        schema["properties"][name]["default"] = m.dump(model())
    return schema


def status_schema() -> Schema:
    return model_schema(m.FineTuneJobStatus)


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.percentText",
        "description": "Percent of the total steps done",
    },
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus", "priority": 1},
    {
        "name": "Eval Loss",
        "type": "number",
        "jsonPath": ".status.progress.evalLoss",
        "priority": 1,
    },
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    root: Schema = {
        "description": (m.FineTuneJob.__doc__ or "").strip(),
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": "size(self.metadata.name) <= 63",
                "message": "metadata.name must be at most 63 characters (it labels the job's pods)",
            },
            *({"rule": rule, "message": message} for rule, message in m.EDIT_RULES),
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{m.PLURAL}.{m.GROUP}",
            "labels": {"app.kubernetes.io/name": "finetune-operator"},
        },
        "spec": {
            "group": m.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": m.KIND,
                "listKind": f"{m.KIND}List",
                "plural": m.PLURAL,
                "singular": m.SINGULAR,
                "shortNames": [m.SHORT_NAME],
                "categories": [
                    "finetune",
                    "ml",
                ],  # not "all": kubectl delete all must not take jobs
            },
            "versions": [
                {
                    "name": m.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


# ------------------------------------------------------------------------------------------ RBAC

# The one list of what the operator may do, verb for verb what it uses: the integration tier
# runs a job's lifecycle as a ServiceAccount bound to these rules and compares them with the
# apiserver's audit log (tests/integration/test_rbac_audit.py, which lists the two exceptions).
# Namespaced objects are the job's children; nodes are listed for their GPU memory labels; CRDs
# and namespaces are what kopf lists and watches to discover and follow its resources.
# Roles/RoleBindings: the apiserver lets the operator grant only what it holds itself, so it
# holds update on configmaps too (the trainer's Role grants get/patch/update on one configmap).
# ``get`` on every child kind: a name already taken (409) is read to check who owns it
# (security.adoption).
OPERATOR_RULES: list[dict[str, list[str]]] = [
    {
        "apiGroups": [m.GROUP],
        "resources": [m.PLURAL],
        "verbs": ["get", "list", "watch", "patch", "delete"],
    },
    {"apiGroups": [m.GROUP], "resources": [f"{m.PLURAL}/status"], "verbs": ["patch"]},
    # children carry blockOwnerDeletion; OwnerReferencesPermissionEnforcement wants this
    {"apiGroups": [m.GROUP], "resources": [f"{m.PLURAL}/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["get", "list", "watch", "create", "delete"],
    },
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        # list/watch: the progress ConfigMaps' events trigger the reconcile (handlers.py)
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    },
    # list/watch on the children: a deleted one is created again at once (handlers.child_event)
    {
        "apiGroups": [""],
        "resources": ["serviceaccounts"],
        "verbs": ["get", "list", "watch", "create"],
    },
    {
        "apiGroups": [""],
        "resources": ["persistentvolumeclaims"],
        "verbs": ["get", "list", "watch", "create"],
    },
    # the headless Service <job>-nodes of a multi-node job (builders.nodes_service)
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "list", "watch", "create"],
    },
    # leader election (leader.py): one Lease, read, created, renewed
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
    # Kueue (docs/kueue.md): a queued pod group's Workload says why it is not admitted yet
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["get"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
]

OPERATOR_ROLE_NAME = "finetune-operator"


def build_cluster_role() -> dict[str, Any]:
    """The operator's least-privilege ClusterRole."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": OPERATOR_ROLE_NAME,
            "labels": {"app.kubernetes.io/name": "finetune-operator"},
        },
        "rules": copy.deepcopy(OPERATOR_RULES),
    }

"""What a FineTuneJob may ask of its pods: the admin allowlists, checked by a pure function.

The shipped ValidatingAdmissionPolicy (``policy.py``) checks the same lists at the door, plus the
author's own rights (CEL ``authorizer``). The operator calls ``violations`` before it builds any
pod, so a job that slipped past admission (created before the policy, or with the policy off)
fails with reason ``NotAllowed`` and no pod is made. The constants below are the one copy both
use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from finetune_operator import models as m
from finetune_operator.settings import DEFAULT_NODE_LABEL_KEYS, DEFAULT_VOLUME_TYPES, Settings

__all__ = [
    "DEFAULT_NODE_LABEL_KEYS",
    "DEFAULT_VOLUME_TYPES",
    "Allowlists",
    "allowlists",
    "violations",
]
# A label or annotation key whose prefix is (a subdomain of) one of these is refused: the
# platform, the operator and Kueue (kueue.x-k8s.io) read them (AppArmor / seccomp annotations
# live there too).
RESERVED_DOMAINS = ("kubernetes.io", "k8s.io", "x-k8s.io", m.GROUP)
# ... or whose prefix contains one of these words.
RESERVED_WORDS = ("apparmor", "seccomp")
# Reserved keys a job may still set.
RESERVED_EXCEPTIONS = ("kueue.x-k8s.io/queue-name",)
# ``*`` in an allowlist allows everything; an image entry ending in ``*`` is a prefix.
ANY = "*"


@dataclass(frozen=True)
class Allowlists:
    """The admin's allowlists (operator settings, from the chart's ``policy`` values)."""

    images: tuple[str, ...]
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    priority_classes: tuple[str, ...] = ()
    toleration_keys: tuple[str, ...] = ()
    node_label_keys: tuple[str, ...] = DEFAULT_NODE_LABEL_KEYS
    trust_remote_code: bool = False


def allowlists(settings: Settings) -> Allowlists:
    """The allowlists of the operator's settings; the default trainer image is always allowed."""
    return Allowlists(
        images=(settings.trainer_image, *settings.allowed_images),
        volume_types=tuple(settings.allowed_volume_types),
        priority_classes=tuple(settings.allowed_priority_classes),
        toleration_keys=tuple(settings.allowed_toleration_keys),
        node_label_keys=tuple(settings.allowed_node_label_keys),
        trust_remote_code=settings.allow_trust_remote_code,
    )


def reserved_key(key: str) -> bool:
    """Whether a label/annotation key has a reserved prefix."""
    if key in RESERVED_EXCEPTIONS or "/" not in key:
        return False
    prefix = key.split("/", 1)[0]
    if any(prefix == d or prefix.endswith(f".{d}") for d in RESERVED_DOMAINS):
        return True
    return any(word in prefix for word in RESERVED_WORDS)


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    return any(
        entry in (ANY, image) or (entry.endswith("*") and image.startswith(entry[:-1]))
        for entry in allowed
    )


def unsafe_path(value: str | None) -> bool:
    """A key/path/name that could leave the directory it is joined to."""
    return value is not None and (value.startswith("/") or ".." in value)


def _path_violations(job: m.FineTuneJob) -> list[str]:
    spec = job.spec
    cm, token = spec.dataset.config_map, spec.hub_token_secret_ref
    template = spec.dataset.chat_template.config_map if spec.dataset.chat_template else None
    fields: list[tuple[str, str | None]] = [
        ("spec.model.name", spec.model.name),
        ("spec.model.path", spec.model.path),
        ("spec.dataset.path", spec.dataset.path),
        ("spec.dataset.hub", spec.dataset.hub),
        ("spec.dataset.configMap.key", cm.key if cm else None),
        ("spec.hubTokenSecretRef.key", token.key if token else None),
        ("spec.dataset.chatTemplate.configMap.key", template.key if template else None),
    ]
    return [
        f"{where} {value!r} must be relative and must not contain '..'"
        for where, value in fields
        if unsafe_path(value)
    ]


def _template_violations(tpl: m.PodTemplate, allow: Allowlists) -> list[str]:
    out: list[str] = []
    for volume in tpl.volumes:
        kinds = sorted(k for k in volume if k != "name")
        bad = [k for k in kinds if k not in allow.volume_types and ANY not in allow.volume_types]
        if bad:
            out.append(
                f"spec.podTemplate.volumes[{volume.get('name', '?')}]: volume type "
                f"{', '.join(bad)} is not allowed (allowed: {', '.join(allow.volume_types)})"
            )
    for where, keys in (("labels", tpl.labels), ("annotations", tpl.annotations)):
        out += [f"spec.podTemplate.{where}: key {k!r} is reserved" for k in keys if reserved_key(k)]
    if tpl.priority_class_name and not {tpl.priority_class_name, ANY} & set(allow.priority_classes):
        out.append(
            f"spec.podTemplate.priorityClassName {tpl.priority_class_name!r} is not in the "
            "admin's allowlist"
        )
    for tol in tpl.tolerations:
        key = tol.get("key")
        if ANY not in allow.toleration_keys and key not in allow.toleration_keys:
            out.append(
                f"spec.podTemplate.tolerations: key {key or '(any)'!r} is not in the admin's "
                "allowlist"
            )
    own = {v.get("name") for v in tpl.volumes}
    for mount in tpl.volume_mounts:
        sub = mount.get("subPath")
        if isinstance(sub, str) and unsafe_path(sub):
            out.append(f"spec.podTemplate.volumeMounts[{mount.get('name', '?')}].subPath {sub!r}")
        if mount.get("name") not in own:
            out.append(
                f"spec.podTemplate.volumeMounts[{mount.get('name', '?')}]: only volumes of "
                "spec.podTemplate.volumes may be mounted (the operator's own, e.g. the shared "
                "cache, keep their read-only mounts)"
            )
    return out + _placement_violations(tpl, allow)


def node_affinity_keys(affinity: dict[str, Any]) -> list[str]:
    """Every node label key (and node field) a nodeAffinity names."""
    node = affinity.get("nodeAffinity") or {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = list(required.get("nodeSelectorTerms") or [])
    terms += [
        p.get("preference") or {}
        for p in node.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    ]
    return [
        str(e.get("key"))
        for t in terms
        for e in [*(t.get("matchExpressions") or []), *(t.get("matchFields") or [])]
    ]


def _placement_violations(tpl: m.PodTemplate, allow: Allowlists) -> list[str]:
    """nodeSelector and affinity: a node label outside the admin's list could steer the pod
    onto nodes kept for others (or one named node); pod (anti-)affinity places it next to
    other teams' pods. Both need the admin."""
    if ANY in allow.node_label_keys:
        return []
    keys = [*tpl.node_selector, *node_affinity_keys(tpl.affinity or {})]
    out = [
        f"spec.podTemplate: node label {k!r} is not in the admin's allowlist"
        for k in dict.fromkeys(keys)
        if k not in allow.node_label_keys
    ]
    out += [
        f"spec.podTemplate.affinity.{k} is not allowed (only nodeAffinity)"
        for k in (tpl.affinity or {})
        if k != "nodeAffinity"
    ]
    return out


def violations(job: m.FineTuneJob, allow: Allowlists) -> list[str]:
    """Every way ``job`` exceeds the allowlists, as messages naming the field; [] = allowed."""
    out: list[str] = []
    if job.spec.image is not None and not image_allowed(job.spec.image, allow.images):
        out.append(f"spec.image {job.spec.image!r} is not in the admin's image allowlist")
    if job.spec.model.trust_remote_code and not allow.trust_remote_code:
        out.append("spec.model.trustRemoteCode is turned off by the admin")
    out += _path_violations(job)
    if job.spec.pod_template is not None:
        out += _template_violations(job.spec.pod_template, allow)
    return out


# ------------------------------------------------------------------------------------ ownership

Adoption = Literal["adopt", "wait", "conflict"]


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def owner_uid(desired: dict[str, Any]) -> str:
    """The job UID a child the operator builds belongs to (ownerReference or job-uid label)."""
    meta = _meta(desired)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == m.KIND:
            return str(ref.get("uid") or "")
    return str((meta.get("labels") or {}).get(m.LABEL_JOB_UID) or "")


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether ``obj`` belongs to the job with ``uid``: an ownerReference to it, or (for the
    output PVC, which carries no ownerReference) the job-uid label."""
    meta = _meta(obj)
    if not uid:
        return False
    if any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
        return True
    return bool((meta.get("labels") or {}).get(m.LABEL_JOB_UID) == uid)


def adoption(existing: dict[str, Any], desired: dict[str, Any]) -> Adoption:
    """What to do when ``desired``'s name is taken by ``existing``.

    ``adopt``: it is this job's. ``wait``: an earlier job of the same name (deleted, created
    again) owns it and the garbage collector will remove it. ``conflict``: anything else; the job
    fails with NameConflict and the object is left untouched. The output PVC of an earlier job
    of this name (labelled by the operator, never garbage-collected) is adopted on purpose: its
    work directory moves the earlier run aside (docs/contract.md).
    """
    if owned_by(existing, owner_uid(desired)):
        return "adopt"
    name = (_meta(desired).get("labels") or {}).get(m.LABEL_JOB)
    meta = _meta(existing)
    refs = meta.get("ownerReferences") or []
    if any(r.get("kind") == m.KIND and r.get("name") == name for r in refs):
        return "wait"
    labels = meta.get("labels") or {}
    if (
        existing.get("kind", desired.get("kind")) == "PersistentVolumeClaim"
        and not refs
        and labels.get(m.LABEL_JOB) == name
        and m.LABEL_JOB_UID in labels
    ):
        return "adopt"
    return "conflict"

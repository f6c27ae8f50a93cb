"""security.py: the admin allowlists (one table of specs and the violation each must name) and
the ownership verdicts on a name collision."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import security as sec
from finetune_operator.settings import Settings
from tests.unit.operator.conftest import build_job

REQ, PREF = (
    "requiredDuringSchedulingIgnoredDuringExecution",
    "preferredDuringSchedulingIgnoredDuringExecution",
)
ALLOW = sec.allowlists(Settings(trainer_image="reg/trainer:1", allowed_images=["reg/extra/*"]))

# (case, spec overrides, a fragment of the one violation expected)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("foreign image", {"image": "busybox"}, "spec.image 'busybox' is not in"),
    ("trust remote code", {"model": {"trustRemoteCode": True}}, "trustRemoteCode is turned off"),
    ("hostPath volume",
     {"podTemplate": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
     "volumes[root]: volume type hostPath is not allowed"),
    ("nfs volume",
     {"podTemplate": {"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}},
     "volume type nfs"),
    ("reserved label", {"podTemplate": {"labels": {"finetune.dev/job": "other"}}},
     "labels: key 'finetune.dev/job' is reserved"),
    ("kubernetes.io label", {"podTemplate": {"labels": {"app.kubernetes.io/name": "x"}}},
     "is reserved"),
    ("apparmor annotation",
     {"podTemplate": {"annotations": {"container.apparmor.security.beta.kubernetes.io/trainer":
                                      "unconfined"}}}, "annotations: key"),
    ("seccomp annotation", {"podTemplate": {"annotations": {"seccomp.example/x": "y"}}},
     "is reserved"),
    ("kueue label other than queue-name",
     {"podTemplate": {"labels": {"kueue.x-k8s.io/priority-class": "x"}}}, "is reserved"),
    ("priority class", {"podTemplate": {"priorityClassName": "system-node-critical"}},
     "priorityClassName 'system-node-critical'"),
    ("wildcard toleration", {"podTemplate": {"tolerations": [{"operator": "Exists"}]}},
     "tolerations: key '(any)'"),
    ("toleration key",
     {"podTemplate": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}},
     "tolerations: key 'dedicated'"),
    ("configMap key escaping", {"dataset": {"pvc": None, "path": None,
                                            "configMap": {"name": "d", "key": "../x"}}},
     "spec.dataset.configMap.key '../x'"),
    ("hub token key absolute", {"hubTokenSecretRef": {"name": "hf", "key": "/etc/passwd"}},
     "spec.hubTokenSecretRef.key"),
    ("model name escaping", {"model": {"pvc": None, "path": None, "name": "../../x"}},
     "spec.model.name"),
    ("subPath escaping",
     {"podTemplate": {"volumes": [{"name": "v", "emptyDir": {}}],
                      "volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../.."}]}},
     "subPath '../..'"),
    ("the shared cache mounted again, writable",
     {"cache": {"pvc": "models"},
      "podTemplate": {"volumeMounts": [{"name": "shared-cache", "mountPath": "/w"}]}},
     "volumeMounts[shared-cache]: only volumes of spec.podTemplate.volumes may be mounted"),
    ("node selector on a reserved pool", {"podTemplate": {"nodeSelector": {"pool": "payments"}}},
     "node label 'pool' is not in the admin's allowlist"),
    ("node affinity to one named node",
     {"podTemplate": {"affinity": {"nodeAffinity": {REQ:
         {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                  "values": ["gpu-7"]}]}]}}}}},
     "node label 'metadata.name'"),
    ("preferred node affinity",
     {"podTemplate": {"affinity": {"nodeAffinity": {PREF: [{"weight": 1, "preference":
         {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}}}},
     "node label 'team'"),
    ("pod affinity", {"podTemplate": {"affinity": {"podAffinity": {}}}},
     "affinity.podAffinity is not allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spec", "fragment"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(case: str, spec: dict[str, Any], fragment: str) -> None:
    found = sec.violations(build_job(spec=spec), ALLOW)
    assert len(found) == 1, found
    assert fragment in found[0]


ALLOWED: list[dict[str, Any]] = [
    {},
    {"image": "reg/trainer:1"},
    {"image": "reg/extra/trainer:2"},
    {"podTemplate": {"labels": {"kueue.x-k8s.io/queue-name": "q", "team": "a"}}},
    {"podTemplate": {"volumes": [{"name": "s", "secret": {"secretName": "x"}},
                                 {"name": "e", "emptyDir": {}}]}},
    {"hubTokenSecretRef": {"name": "hf", "key": "token"}},
    {"podTemplate": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
                     "affinity": {"nodeAffinity": {REQ:
                         {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "topology.kubernetes.io/zone", "operator": "In",
                              "values": ["a"]}]}]}}}}},
]  # fmt: skip


@pytest.mark.parametrize("spec", ALLOWED)
def test_allowed(spec: dict[str, Any]) -> None:
    assert sec.violations(build_job(spec=spec), ALLOW) == []


def test_admin_loosens_each_list() -> None:
    loose = sec.allowlists(
        Settings(
            allowed_images="*",  # type: ignore[arg-type]  # the env form
            allowed_volume_types="hostPath,nfs",  # type: ignore[arg-type]
            allowed_priority_classes="high",  # type: ignore[arg-type]
            allowed_toleration_keys="*",  # type: ignore[arg-type]
            allowed_node_label_keys="*",  # type: ignore[arg-type]
            allow_trust_remote_code=True,
        )
    )
    spec = {
        "image": "anything",
        "model": {"trustRemoteCode": True},
        "podTemplate": {
            "volumes": [{"name": "h", "hostPath": {"path": "/data"}}],
            "priorityClassName": "high",
            "tolerations": [{"operator": "Exists"}],
            "nodeSelector": {"pool": "payments"},
            "affinity": {"podAffinity": {}},
        },
    }
    assert sec.violations(build_job(spec=spec), loose) == []


def _obj(
    kind: str = "ConfigMap",
    refs: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> Any:
    meta: dict[str, Any] = {"name": "bot-config", "labels": labels or {}}
    if refs is not None:
        meta["ownerReferences"] = refs
    return {"kind": kind, "metadata": meta}


MINE = _obj(
    refs=[{"kind": "FineTuneJob", "name": "bot", "uid": "uid-1"}],
    labels={"finetune.dev/job": "bot"},
)
PVC = _obj(
    "PersistentVolumeClaim", labels={"finetune.dev/job": "bot", "finetune.dev/job-uid": "uid-1"}
)
ADOPTION: list[tuple[str, Any, Any, str]] = [
    ("owned by this job", MINE, MINE, "adopt"),
    ("no owner", _obj(), MINE, "conflict"),
    ("another job's", _obj(refs=[{"kind": "FineTuneJob", "name": "x", "uid": "u2"}]), MINE,
     "conflict"),
    ("an earlier job of this name",
     _obj(refs=[{"kind": "FineTuneJob", "name": "bot", "uid": "u0"}]), MINE, "wait"),
    ("a forged job label", _obj(labels={"finetune.dev/job": "bot"}), MINE, "conflict"),
    ("this job's output PVC", PVC, PVC, "adopt"),
    ("an earlier namesake's output PVC",
     _obj("PersistentVolumeClaim",
          labels={"finetune.dev/job": "bot", "finetune.dev/job-uid": "u0"}), PVC, "adopt"),
    ("a user's PVC of that name", _obj("PersistentVolumeClaim"), PVC, "conflict"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "existing", "desired", "verdict"), ADOPTION, ids=[c[0] for c in ADOPTION]
)
def test_adoption(case: str, existing: Any, desired: Any, verdict: str) -> None:
    assert sec.adoption(existing, desired) == verdict

"""What the operator knows of a job from its own watches, and when that is not enough (pure).

A reconcile reads the job, its pods and its progress ConfigMap from kopf's indexes, which the
watches the operator keeps anyway fill, instead of the API: a trainer's progress report then
costs its one ConfigMap write and at most one status patch. An index lags the API by the watch's
delay, which matters only right after this operator wrote something, so three rules decide:

- **The job**: the newer of the index's copy and the answer to this operator's own last status
  patch, ordered by resourceVersion as client-go's ``MutationCache`` orders them (etcd's revision,
  an integer); when either cannot be read as one, the caller reads the API. A stale job can never
  be written back: the status patch carries its resourceVersion, a 409 makes the next pass read
  the API (``handlers.reconcile``).
- **Pods and the progress ConfigMap** after this operator created or deleted a pod or cleared
  report keys: the job is ``Unsettled`` and reconciles read the API until the index agrees with
  what the API answered (same objects, same resourceVersions), i.e. until the watch has delivered
  the write.
- **The resync** (the safety net against a watch that missed events) lists each namespace's
  jobs, pods and ConfigMaps once and compares them with the indexes; a job whose copies disagree
  is reconciled from fresh reads of the API, the others from the indexes: O(namespaces) requests
  per round instead of three per job.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

Key = tuple[str, str]  # (namespace, job name)


class Packed(NamedTuple):
    """An object as an index keeps it: its name and resourceVersion, and the rest as compact
    JSON (a tenth of the memory of the parsed dicts: 1,000 jobs with their pods fit in a few
    MiB), parsed again by the reconcile that reads it."""

    name: str
    rv: str | None
    text: str


def pack(body: Mapping[str, Any]) -> Packed:
    meta = body.get("metadata") or {}
    text = json.dumps(body, separators=(",", ":"))
    return Packed(str(meta.get("name")), meta.get("resourceVersion"), text)


def unpack(packed: Packed) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(packed.text)
    return out


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of an object without ``metadata.managedFields`` (often the largest part,
    never read): what the indexes keep, so 1,000 jobs' objects stay small."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of a pod: its metadata (no managedFields), status and scheduling
    gates (``lifecycle.pods``, ``kueue.gated``, ``security.owned_by``); a pod's spec is most
    of it and never read otherwise."""
    gates = (body.get("spec") or {}).get("schedulingGates")
    out = {**slim(body), "spec": {"schedulingGates": gates} if gates else {}}
    return {
        k: v for k, v in out.items() if k in ("apiVersion", "kind", "metadata", "spec", "status")
    }


def job_summary(item: Mapping[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    """What the resync needs of a listed job: name, namespace, uid, resourceVersion, the annotations
    and status fields named in ``keep``, ``spec.ttlSecondsAfterFinished`` and the phase."""
    meta, status = item.get("metadata") or {}, item.get("status") or {}
    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            **{k: meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion")},
            "annotations": {k: annotations[k] for k in keep if k in annotations},
        },
        "spec": {
            "ttlSecondsAfterFinished": (item.get("spec") or {}).get("ttlSecondsAfterFinished")
        },
        "status": {k: status[k] for k in ("phase", *keep) if k in status},
    }


def resource_version(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


def _revision(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(resource_version(obj) or "")
    except ValueError:
        return None


def newest(
    indexed: dict[str, Any] | None, written: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, bool]:
    """(the newer copy of an object, whether it is trusted). Not trusted: the two copies cannot be
    ordered (a resourceVersion that is not an integer), so the caller reads the API; ``None``
    trusted: neither copy exists."""
    if written is None or indexed is None:
        return (indexed if written is None else written), True
    a, b = _revision(indexed), _revision(written)
    if a is None or b is None:
        return None, False
    return (indexed if a >= b else written), True


def _names(objs: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    return {str((o.get("metadata") or {}).get("name")): resource_version(o) for o in objs}


# what two sources must share to agree: each pod's name and resourceVersion, and the progress
# ConfigMap's resourceVersion (None: absent)
Versions = tuple[dict[str, str | None], str | None]
NONE: Versions = ({}, None)


@dataclass(frozen=True)
class Children:
    """A job's pods and progress ConfigMap (None: absent), as one source shows them."""

    pods: tuple[dict[str, Any], ...]
    progress: dict[str, Any] | None

    def versions(self) -> Versions:
        return _names(self.pods), resource_version(self.progress)


def agree(a: Children, b: Children) -> bool:
    """Whether two sources show the same versions of the same objects."""
    return a.versions() == b.versions()


def packed_versions(pods: Iterable[Packed], progress: Packed | None) -> Versions:
    """``Versions`` of a job's children as the indexes hold them."""
    return {p.name: p.rv for p in pods}, progress.rv if progress is not None else None


class Drift:
    """The resync's judgement of which jobs' indexes missed a watch event: a job whose indexed
    versions differ from the API's LIST at two resyncs in a row while the index did not change
    in between (its watch delivers nothing for it). An index that differs but moves is only
    behind (a busy operator works through its backlog) and reading the API for it would only add
    load, so it is trusted a round longer."""

    def __init__(self) -> None:
        self._suspects: dict[Key, object] = {}
        self._seen: dict[Key, object] = {}

    def stuck(self, key: Key, indexed: object, listed: object) -> bool:
        """One job of this round; True: read it afresh."""
        if indexed == listed:
            return False
        stuck = self._suspects.get(key) == indexed
        self._seen[key] = indexed
        return stuck

    def round_done(self) -> None:
        """The next round compares with this one's suspects only."""
        self._suspects, self._seen = self._seen, {}


def listed_versions(
    pods: Iterable[Mapping[str, Any]], maps: Iterable[Mapping[str, Any]], job_label: str
) -> dict[Key, Versions]:
    """Every job's ``Versions`` from a LIST of pods and one of ConfigMaps carrying the job label
    (a job's progress ConfigMap is ``<job>-progress``; its other ConfigMaps do not count)."""
    out: dict[Key, Versions] = {}

    def key(obj: Mapping[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return str(meta.get("namespace")), str((meta.get("labels") or {}).get(job_label))

    for pod in pods:
        names, _ = out.setdefault(key(pod), ({}, None))
        names[str(pod["metadata"]["name"])] = resource_version(pod)
    for cm in maps:
        k = key(cm)
        if (cm.get("metadata") or {}).get("name") == f"{k[1]}-progress":
            out[k] = (out.get(k, ({}, None))[0], resource_version(cm))
    return out


def _covers(indexed: Versions, snapshot: Versions) -> bool:
    """Whether the index has caught up with an API read (``snapshot``): every object the read
    showed is there at least as new, and what the read did not show is gone from the index or
    newer than anything the read showed (made since). Versions that are not integers never
    cover: the caller keeps reading the API."""
    try:
        shown = [*snapshot[0].values(), *([snapshot[1]] if snapshot[1] is not None else [])]
        seen = [int(rv or "") for rv in shown]
        pods = {name: int(rv or "") for name, rv in indexed[0].items()}
        progress = int(indexed[1]) if indexed[1] is not None else None
    except ValueError:
        return False
    # what the read did not show is newer than it only if it is newer than all it showed (an
    # empty read orders nothing)
    newest = max(seen, default=2**63)
    for name, rv in snapshot[0].items():
        if pods.get(name, -1) < int(rv or ""):
            return False
    if any(name not in snapshot[0] and rv <= newest for name, rv in pods.items()):
        return False
    if snapshot[1] is not None:
        return progress is not None and progress >= int(snapshot[1])
    return progress is None or progress > newest


class Unsettled:
    """Jobs whose pods or progress ConfigMap this operator has just written: their index copies
    are not trusted until the index has caught up with the first read of the API made after the
    write (``_covers``). Later reads are not compared: on a busy operator the index is always a
    little behind a job whose trainer keeps reporting, yet it has long seen our write."""

    def __init__(self) -> None:
        self._keys: dict[Key, Versions | None] = {}
        self._lock = threading.Lock()

    def wrote(self, key: Key) -> None:
        with self._lock:
            self._keys[key] = None

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def read(self, key: Key, indexed: Children, api: Children) -> None:
        """An API read after the write: the first one is the mark the index must reach."""
        with self._lock:
            if key not in self._keys:
                return
            snapshot = self._keys[key]
            if snapshot is None:
                snapshot = self._keys[key] = api.versions()
            if _covers(indexed.versions(), snapshot):
                del self._keys[key]

    def forget(self, key: Key) -> None:
        with self._lock:
            self._keys.pop(key, None)


class Written:
    """This operator's last status-patch answer per job (until the index has one as new)."""

    def __init__(self) -> None:
        self._bodies: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def remember(self, key: Key, body: dict[str, Any]) -> None:
        with self._lock:
            self._bodies[key] = slim(body)

    def pick(self, key: Key, indexed: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        """``newest`` of the index's copy and ours; ours is dropped once the index has caught up.
        A job missing from the index (deleted, or not seen yet) is not trusted: read the API."""
        with self._lock:
            written = self._bodies.get(key)
            if indexed is None:
                self._bodies.pop(key, None)
                return None, False
            body, trusted = newest(indexed, written)
            if written is not None and (body is indexed or not trusted):
                del self._bodies[key]
            return body, trusted

    def forget(self, key: Key) -> None:
        with self._lock:
            self._bodies.pop(key, None)

"""When the operator trusts what its watches delivered (views.py), and when it reads the API."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import views


def obj(name: str, rv: str | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **extra}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"metadata": meta, "spec": {"x": 1}}


def test_slim_drops_managed_fields_only() -> None:
    body = obj("a", "3", managedFields=[{"manager": "kubectl"}], labels={"k": "v"})
    out = views.slim(body)
    assert out == {"metadata": {"name": "a", "resourceVersion": "3", "labels": {"k": "v"}},
                   "spec": {"x": 1}}  # fmt: skip
    assert "managedFields" in body["metadata"]  # the watch's own copy is left alone


@pytest.mark.parametrize(
    ("indexed", "written", "expected", "trusted"),
    [
        ("9", "10", "written", True),  # our patch is newer: the watch has not delivered it yet
        ("11", "10", "indexed", True),  # someone wrote after us, the index has it
        ("10", "10", "indexed", True),
        ("9", None, "indexed", True),  # nothing written by us
        ("9", "x1", None, False),  # not etcd revisions: cannot be ordered, read the API
        ("", "10", None, False),
    ],
)
def test_newest_orders_by_resource_version(
    indexed: str, written: str | None, expected: str | None, trusted: bool
) -> None:
    a = obj("job", indexed)
    b = obj("job", written) if written is not None else None
    body, ok = views.newest(a, b)
    assert ok is trusted
    assert body is {"indexed": a, "written": b, None: None}[expected]


def test_written_is_used_until_the_index_catches_up() -> None:
    w = views.Written()
    key = ("ml", "bot")
    w.remember(key, obj("bot", "10", managedFields=[1]))
    body, ok = w.pick(key, obj("bot", "9"))
    assert ok and body is not None and views.resource_version(body) == "10"
    assert "managedFields" not in body["metadata"]
    caught_up = obj("bot", "10")
    assert w.pick(key, caught_up) == (caught_up, True)
    older = obj("bot", "9")  # ours was dropped: an older index copy is all there is now
    assert w.pick(key, older) == (older, True)


def test_a_job_missing_from_the_index_is_read_from_the_api() -> None:
    w = views.Written()
    key = ("ml", "bot")
    w.remember(key, obj("bot", "10"))
    assert w.pick(key, None) == (None, False)
    w.forget(key)
    assert w.pick(key, obj("bot", "3"))[1] is True


def test_children_agree_on_names_and_versions() -> None:
    a = views.Children((obj("p1", "1"), obj("p2", "2")), obj("cm", "5"))
    same = views.Children((obj("p2", "2"), obj("p1", "1")), obj("cm", "5"))
    assert views.agree(a, same)
    assert not views.agree(a, views.Children((obj("p1", "1"),), obj("cm", "5")))  # one missing
    assert not views.agree(a, views.Children((obj("p1", "1"), obj("p2", "3")), obj("cm", "5")))
    assert not views.agree(a, views.Children(a.pods, obj("cm", "6")))  # a newer report
    assert not views.agree(a, views.Children(a.pods, None))


def test_unsettled_until_the_index_shows_what_the_api_shows() -> None:
    u = views.Unsettled()
    key = ("ml", "bot")
    assert key not in u
    u.wrote(key)  # we created pod p1
    before = views.Children((), obj("cm", "5"))
    after = views.Children((obj("p1", "7"),), obj("cm", "5"))
    u.read(key, before, after)  # the watch has not delivered it yet
    assert key in u
    u.read(key, after, after)
    assert key not in u


def test_a_pod_keeps_what_the_operator_reads() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "managedFields": [1], "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "env": [{"name": "X"}]}],
                 "schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]},
        "status": {"phase": "Running"},
    }  # fmt: skip
    assert views.slim_pod(pod) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"a": "b"}},
        "spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]},
        "status": {"phase": "Running"},
    }
    assert views.slim_pod({**pod, "spec": {"containers": []}})["spec"] == {}


def test_a_listed_job_is_cut_to_what_the_resync_reads() -> None:
    item = {
        "metadata": {"name": "j", "namespace": "ml", "resourceVersion": "4", "uid": "u",
                     "annotations": {"r": "1", "other": "x"}},
        "spec": {"model": {"name": "m"}, "ttlSecondsAfterFinished": 5},
        "status": {"phase": "Running", "r": "1", "progress": {"step": 3}},
    }  # fmt: skip
    assert views.job_summary(item, ("r",)) == {
        "metadata": {"namespace": "ml", "name": "j", "uid": "u", "resourceVersion": "4",
                     "annotations": {"r": "1"}},
        "spec": {"ttlSecondsAfterFinished": 5},
        "status": {"phase": "Running", "r": "1"},
    }  # fmt: skip


def test_listed_versions_per_job() -> None:
    def child(name: str, job: str, rv: str, ns: str = "ml") -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                             "labels": {"job": job}}}  # fmt: skip

    pods = [child("a-prepare", "a", "1"), child("a-1", "a", "2"), child("b-1", "b", "3", "x")]
    maps = [
        child("a-progress", "a", "7"),
        child("a-config", "a", "8"),
        child("c-progress", "c", "9"),
    ]
    assert views.listed_versions(pods, maps, "job") == {
        ("ml", "a"): ({"a-prepare": "1", "a-1": "2"}, "7"),
        ("x", "b"): ({"b-1": "3"}, None),
        ("ml", "c"): ({}, "9"),
    }


def test_packed_objects_keep_name_version_and_content() -> None:
    body = obj("p1", "7", labels={"a": "b"})
    packed = views.pack(body)
    assert (packed.name, packed.rv) == ("p1", "7") and views.unpack(packed) == body
    assert views.packed_versions([packed], views.pack(obj("cm", "9"))) == ({"p1": "7"}, "9")
    assert views.packed_versions([], None) == ({}, None)


def test_drift_reads_afresh_only_an_index_that_did_not_move_for_a_round() -> None:
    d = views.Drift()
    key = ("ml", "bot")
    assert not d.stuck(key, "v1", "v1")  # agrees
    d.round_done()
    assert not d.stuck(key, "v1", "v2")  # behind: maybe busy
    d.round_done()
    assert not d.stuck(key, "v2", "v3")  # behind, but moved
    d.round_done()
    assert d.stuck(key, "v2", "v4")  # behind and frozen a whole round: a missed event
    d.round_done()
    assert not d.stuck(key, "v4", "v4")  # caught up
    d.round_done()
    assert not d.stuck(key, "v4", "v5")  # a suspect again, from scratch


def test_settled_once_the_index_reaches_the_first_read_after_the_write() -> None:
    u = views.Unsettled()
    key = ("ml", "bot")
    u.wrote(key)  # we created pod p1
    before = views.Children((), obj("cm", "5"))
    first = views.Children((obj("p1", "7"),), obj("cm", "5"))
    u.read(key, before, first)
    assert key in u
    # the trainer keeps reporting: later reads are newer than the index, which is still settled
    # once it has what the first read showed
    later = views.Children((obj("p1", "7"),), obj("cm", "9"))
    u.read(key, views.Children((obj("p1", "7"),), obj("cm", "8")), later)
    assert key not in u


@pytest.mark.parametrize(
    ("indexed", "snapshot", "covered"),
    [
        (({"p": "7"}, "5"), ({"p": "7"}, "5"), True),
        (({"p": "8"}, "6"), ({"p": "7"}, "5"), True),  # newer
        (({}, "5"), ({"p": "7"}, "5"), False),  # the created pod not seen yet
        (({"p": "6"}, "5"), ({"p": "7"}, "5"), False),  # an older copy of it
        (({"old": "3"}, "5"), ({}, "5"), False),  # a deleted pod still there
        (({"new": "9"}, "5"), ({}, "5"), True),  # a pod made after the read
        (({}, None), ({}, "5"), False),  # the ConfigMap not seen yet
        (({"p": "5"}, "4"), ({"p": "5"}, None), False),  # a ConfigMap deleted before the read
        (({"p": "5"}, "6"), ({"p": "5"}, None), True),  # made after the read
        (({}, "6"), ({}, None), False),  # an empty read orders nothing
        (({"p": "x"}, "5"), ({"p": "x"}, "5"), False),  # not integers: keep reading the API
    ],
)
def test_an_index_covers_a_read(indexed: Any, snapshot: Any, covered: bool) -> None:
    assert views._covers(indexed, snapshot) is covered

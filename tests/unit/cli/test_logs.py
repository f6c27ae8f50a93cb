"""``kubectl finetune logs``: the current attempt's pod, a note when it is gone (after a suspend
the plugin used to show the prepare pod silently), and ``--all`` across every attempt."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest

from finetune_operator import models as m
from finetune_operator.cli import diagnose, volumelogs, volumeread
from finetune_operator.cli.api import CliError
from tests.unit.cli.conftest import BASE, NOW


def _pod(name: str, role: str, attempt: int, created: str) -> dict[str, Any]:
    labels = {m.LABEL_JOB: "bot", m.LABEL_ROLE: role, m.LABEL_ATTEMPT: str(attempt)}
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created}}


class _Api:
    namespace = "ml"

    def __init__(self, status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.status, self.pods = status, pods
        self.allowed = {"create pods/exec": True, "create pods": True, "delete pods": True}

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        job = copy.deepcopy(BASE)
        job["metadata"].update(name=name, namespace=namespace, uid="u1")
        return {**job, "status": self.status}

    def can_i(self, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
        return self.allowed[f"{verb} " + "/".join(x for x in (resource, subresource) if x)]

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self.pods

    def read_log(self, namespace: str, pod: str, container: str | None = None,
                 tail: int | None = None) -> str:  # fmt: skip
        if pod == "bot-3":
            raise CliError("container not started")
        return f"log of {pod}\n"


# attempt 1 suspended (its pod deleted), attempt 2 preempted (pod kept), attempt 3 pending
STATUS = {
    "phase": "Starting",
    "attempt": 3,
    "attempts": [
        {"attempt": 1, "pod": "bot-1", "reason": "Suspended"},
        {"attempt": 2, "pod": "bot-2", "reason": "Preempted"},
    ],
}
PODS = [
    _pod("bot-2", "train", 2, "2026-11-26T11:00:00Z"),
    _pod("bot-3", "train", 3, "2026-11-26T12:00:00Z"),
    _pod("bot-prepare", "prepare", 0, "2026-11-26T10:00:00Z"),
]


def test_all_lists_every_attempt_in_order_and_the_gone_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.BytesIO()
    assert diagnose.logs(_Api(STATUS, PODS), "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    assert out.getvalue().decode().splitlines() == [
        "==> pod bot-prepare (prepare) <==",
        "log of bot-prepare",
        "==> pod bot-1 (attempt 1, Suspended): gone <==",
        "(no log: no running pod of the job mounts the volume; no pod of the job is left to take "
        "the trainer image from; it is on claim finetune-out, bot/logs/u1/bot-1.log "
        "(older part: bot-1.log.1))",
        "==> pod bot-2 (attempt 2) <==",
        "log of bot-2",
        "==> pod bot-3 (attempt 3) <==",
        "(no log: container not started)",
    ]


def test_a_gone_current_pod_is_named_not_silently_replaced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = {**STATUS, "phase": "Suspended", "attempt": 1, "attempts": STATUS["attempts"][:1]}
    pods = [PODS[2]]
    out = io.BytesIO()
    assert diagnose.logs(_Api(status, pods), "bot", False, None, out) == 0  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "the pod of attempt 1 is gone" in err and "==> pod bot-prepare" in err
    assert out.getvalue() == b"log of bot-prepare\n"
    # the current attempt's pod present: no note
    out = io.BytesIO()
    status = {**STATUS, "attempt": 2}
    assert diagnose.logs(_Api(status, PODS), "bot", False, 10, out) == 0  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "gone" not in err and "==> pod bot-2" in err and out.getvalue() == b"log of bot-2\n"


# ------------------------------------------------------------ gone pods, from the job's volume


def _running_pod(name: str, attempt: int) -> dict[str, Any]:
    pod = _pod(name, "train", attempt, "2026-11-26T12:00:00Z")
    pod["spec"] = {
        "containers": [
            {
                "name": "trainer",
                "image": "reg/trainer:1",
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
            }
        ],
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": "finetune-out"}}],
    }
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
    }
    return pod


def _dump(pod: str, text: str) -> str:
    return json.dumps({"pod": pod, "text": text}) + "\n"


class _VolumeApi(_Api):
    """Exec and pods: records what the plugin did; ``exec_error``/``reader_phase`` steer it."""

    def __init__(self, status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        super().__init__(status, pods)
        self.exec_error: str | None = None
        self.reader_phase = "Succeeded"
        self.calls: list[tuple[str, Any]] = []
        self.created: dict[str, Any] | None = None

    def exec_output(
        self, namespace: str, pod: str, container: str, command: list[str], timeout: float
    ) -> str:
        self.calls.append(("exec", (pod, container, command)))
        if self.exec_error:
            raise CliError(self.exec_error)
        return _dump("bot-1", "attempt 1 line a\nattempt 1 line b\n")

    def create_pod(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create", body["metadata"]["name"]))
        self.created = body

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return {"status": {"phase": self.reader_phase, "reason": "DeadlineExceeded"}}

    def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))

    def read_log(self, namespace: str, pod: str, container: str | None = None,
                 tail: int | None = None) -> str:  # fmt: skip
        if self.created is not None and pod == self.created["metadata"]["name"]:
            return _dump("bot-1", "from the reader\n")
        return super().read_log(namespace, pod, container, tail)


GONE_1 = {"phase": "Running", "attempt": 2,
          "attempts": [{"attempt": 1, "pod": "bot-1", "reason": "PodDeleted"}]}  # fmt: skip


def test_a_gone_attempts_log_is_read_by_exec_in_the_running_pod() -> None:
    api = _VolumeApi(GONE_1, [PODS[2], _running_pod("bot-2", 2)])
    out = io.BytesIO()
    assert diagnose.logs(api, "bot", False, 1, out, every=True) == 0  # type: ignore[arg-type]
    assert out.getvalue().decode().splitlines() == [
        "==> pod bot-prepare (prepare) <==",
        "log of bot-prepare",
        "==> pod bot-1 (attempt 1, PodDeleted): gone; its log from the job's volume, read by "
        "exec in pod bot-2 <==",
        "attempt 1 line b",  # --tail 1
        "==> pod bot-2 (attempt 2) <==",
        "log of bot-2",
    ]
    assert api.calls == [
        ("exec", ("bot-2", "trainer",
                  ["finetune-trainer", "read-logs", "--dir", "/workspace/logs/u1", "bot-1"])),
    ]  # fmt: skip


def test_when_exec_fails_a_reader_pod_reads_it_and_is_deleted() -> None:
    api = _VolumeApi(GONE_1, [PODS[2], _running_pod("bot-2", 2)])
    api.exec_error = 'exec in pod "bot-2": Forbidden (HTTP 403)'
    out = io.BytesIO()
    assert diagnose.logs(api, "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    assert api.created is not None
    name = api.created["metadata"]["name"]
    assert [c[0] for c in api.calls] == ["exec", "create", "delete"]
    assert api.calls[-1] == ("delete", name) and name.startswith("bot-logs-")
    assert api.created["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    text = out.getvalue().decode()
    assert f"read by the reader pod {name}, deleted <==\nfrom the reader\n" in text
    command = api.created["spec"]["containers"][0]["command"]  # within what the kubelet keeps
    assert command[4:6] == ["--max-bytes", str(volumelogs.READER_MAX_BYTES)]


def test_a_reader_that_fails_is_deleted_and_the_file_is_named() -> None:
    done = _running_pod("bot-2", 2)  # ended: the reader is the only way, with its image
    done["status"] = {"phase": "Succeeded"}
    api = _VolumeApi(GONE_1, [PODS[2], done])
    api.reader_phase = "Failed"
    out = io.BytesIO()
    assert diagnose.logs(api, "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["create", "delete"]
    text = out.getvalue().decode()
    assert "(no log: no running pod of the job mounts the volume; reader pod" in text
    assert "failed: DeadlineExceeded; it is on claim finetune-out, bot/logs/u1/bot-1.log" in text


def test_a_reader_still_pending_at_its_deadline_is_given_up_and_deleted() -> None:
    api = _VolumeApi(GONE_1, [])
    api.reader_phase = "Pending"
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    body = {"metadata": {"name": "bot-logs-1"}}
    with pytest.raises(CliError, match=r'reader pod "bot-logs-1" did not finish in 10 s \(Pending'):
        volumeread.run_reader(api, body, deadline_s=10, sleep=sleep, clock=lambda: now[0])  # type: ignore[arg-type]
    assert api.calls == [("create", "bot-logs-1"), ("delete", "bot-logs-1")]
    assert 10 <= now[0] <= 12


@pytest.mark.parametrize("may_create", [False, True])  # a reader it cannot delete: none either
def test_without_exec_or_pod_rights_nothing_is_created_and_the_file_is_named(
    may_create: bool,
) -> None:
    api = _VolumeApi(GONE_1, [PODS[2], _running_pod("bot-2", 2)])
    api.allowed = {"create pods/exec": False, "create pods": may_create, "delete pods": False}
    out = io.BytesIO()
    assert diagnose.logs(api, "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    assert api.calls == []
    assert (
        "(no log: you may not exec into pods (pods/exec create); you may not create and delete "
        "pods (for a reader pod); it is on claim finetune-out, bot/logs/u1/bot-1.log (older part: "
        "bot-1.log.1))"
    ) in out.getvalue().decode()


def test_the_report_holds_the_gone_pods_log_from_the_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = _VolumeApi(GONE_1, [PODS[2], _running_pod("bot-2", 2)])
    monkeypatch.setattr(diagnose, "job_events", lambda api, job: [])
    monkeypatch.setattr(api, "server_version", lambda: "v1.34.0", raising=False)
    files = diagnose.report_files(api, "bot", NOW)  # type: ignore[arg-type]
    assert files["logs/bot-1/trainer.log"] == "attempt 1 line a\nattempt 1 line b\n"
    assert (
        "gone pods: bot-1 (read from the job's volume, read by exec in pod bot-2)"
        in (files["summary.txt"])
    )
    (_, (_, _, command)) = api.calls[0]
    assert command[4:6] == ["--max-bytes", str(diagnose.REPORT_VOLUME_BYTES)]


def test_a_cut_log_says_how_much_of_its_beginning_is_left_out() -> None:
    api = _VolumeApi(GONE_1, [PODS[2], _running_pod("bot-2", 2)])
    cut = json.dumps({"pod": "bot-1", "skipped": 2048}) + "\n" + _dump("bot-1", "the end\n")
    api.exec_output = lambda *a, **k: cut  # type: ignore[method-assign]
    out = io.BytesIO()
    assert diagnose.logs(api, "bot", False, None, out, every=True) == 0  # type: ignore[arg-type]
    lines = out.getvalue().decode().splitlines()
    i = lines.index("(its first 2048 bytes left out)")
    assert lines[i - 1].startswith("==> pod bot-1 ") and lines[i + 1] == "the end"

"""Logs of gone pods from the job's volume: where they are, which way the plugin reads them
(exec, reader pod, or only naming the file), the reader pod's manifest and the output's parsing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from finetune_operator import models as m
from finetune_operator.cli import volumelogs as v
from tests.unit.cli.conftest import BASE

UID = BASE["metadata"]["uid"]


def _job(run: int = 0, **spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(BASE)
    job["spec"].update(spec)
    job["status"] = {"phase": "Running", "run": run}
    return job


def _pod(
    name: str, *, running: bool, claim: str = "finetune-out", image: str = "reg/trainer:1"
) -> dict[str, Any]:
    state = {"running": {}} if running else {"terminated": {"exitCode": 0}}
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": image,
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                }
            ],
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}],
        },
        "status": {
            "phase": "Running" if running else "Succeeded",
            "containerStatuses": [{"name": "trainer", "state": state}],
        },
    }


def test_the_files_are_under_the_runs_work_directory_keyed_by_the_job_uid() -> None:
    where = v.locate(_job())
    assert where == v.Location(
        claim="finetune-out",
        path=f"support-bot/logs/{UID}",
        directory=f"/workspace/logs/{UID}",
    )
    restarted = v.locate(_job(run=2))
    assert restarted is not None and restarted.directory == f"/workspace/runs/2/logs/{UID}"
    assert restarted.path == f"support-bot/runs/2/logs/{UID}"
    assert "claim finetune-out, support-bot/runs/2/logs/" in restarted.files("support-bot-1")
    own_claim = v.locate(_job(output={}))
    assert own_claim is not None and own_claim.claim == "support-bot-output"
    assert v.locate({"metadata": {"name": "x"}, "spec": {"method": "nonsense"}}) is None


ALL = v.Access(exec_pods=True, create_pods=True)
RUNNING = _pod("support-bot-2", running=True)
DONE = _pod("support-bot-prepare", running=False, image="reg/trainer:0")


@pytest.mark.parametrize(
    ("pods", "access", "steps", "skipped"),
    [
        # a running pod mounting the claim and exec allowed: exec first, the reader as fallback
        ([DONE, RUNNING], ALL, [("exec", "support-bot-2"), ("reader", "reg/trainer:1")], []),
        # exec not allowed: the reader pod only
        (
            [DONE, RUNNING],
            v.Access(exec_pods=False, create_pods=True),
            [("reader", "reg/trainer:1")],
            [v.NO_EXEC],
        ),
        # nothing running (suspended, finished): the reader with the image the pods ran
        ([DONE], ALL, [("reader", "reg/trainer:0")], [v.NO_RUNNING]),
        # a running pod of another claim is no way in
        (
            [_pod("support-bot-2", running=True, claim="other")],
            ALL,
            [("reader", "reg/trainer:1")],
            [v.NO_RUNNING],
        ),
        # no pod left and no spec.image: nothing to run a reader with
        (
            [],
            ALL,
            [],
            [
                v.NO_RUNNING,
                v.NO_IMAGE,
            ],
        ),
        # neither exec nor pods: nothing is read (the caller names the file)
        (
            [RUNNING],
            v.Access(exec_pods=False, create_pods=False),
            [],
            [v.NO_EXEC, v.NO_PODS],
        ),
    ],
)
def test_the_least_privileged_way_that_works_comes_first(
    pods: list[dict[str, Any]],
    access: v.Access,
    steps: list[tuple[str, str]],
    skipped: list[str],
) -> None:
    job = _job()
    where = v.locate(job)
    assert where is not None
    chosen = v.plan(job, pods, where, access)
    assert list(chosen.steps) == steps
    assert list(chosen.skipped) == skipped


def test_without_pods_the_reader_takes_the_jobs_own_image() -> None:
    job = _job(image="reg/custom:2")
    assert v.trainer_image([], job) == "reg/custom:2"


def test_the_reader_pod_is_read_only_unprivileged_tokenless_and_owned_by_the_job() -> None:
    job = _job(podTemplate={"nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu"}]})
    job["metadata"]["namespace"] = "ml"
    where = v.locate(job)
    assert where is not None
    command = v.read_command(where, ["support-bot-1"], 1024)
    assert command == [
        "finetune-trainer", "read-logs", "--dir", f"/workspace/logs/{UID}",
        "--max-bytes", "1024", "support-bot-1",
    ]  # fmt: skip
    pod = v.reader_pod(job, where, "reg/trainer:1", command, "support-bot-logs-abc123")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "support-bot-logs-abc123" and meta["namespace"] == "ml"
    assert m.LABEL_JOB not in meta["labels"]  # the operator must not take it for a trainer pod
    assert meta["labels"][v.READER_LABEL] == "support-bot"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "support-bot",
            "uid": UID,
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]
    assert spec["volumes"] == [
        {
            "name": "workspace",
            "persistentVolumeClaim": {"claimName": "finetune-out", "readOnly": True},
        }
    ]
    (c,) = spec["containers"]
    assert c["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/workspace", "subPath": "support-bot", "readOnly": True}
    ]
    assert c["command"] == command and c["image"] == "reg/trainer:1"
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }
    assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == v.READER_DEADLINE_S
    assert spec["nodeSelector"] == {"pool": "gpu"} and spec["tolerations"] == [{"key": "gpu"}]
    assert "env" not in c and "serviceAccountName" not in spec
    assert v.reader_name("bot") != v.reader_name("bot")  # two readers at once never collide


def test_the_readers_output_is_joined_per_pod_and_gaps_are_named() -> None:
    out = "\n".join(
        [
            "some wrapper's banner",
            json.dumps({"pod": "bot-1", "skipped": 4096}),
            json.dumps({"pod": "bot-1", "text": "line 1\nli"}),
            json.dumps({"pod": "bot-1", "text": "ne 2\n"}),
            json.dumps({"pod": "bot-2", "missing": True}),
            json.dumps({"pod": "bot-3", "error": "bot-3.log: Permission denied"}),
            json.dumps({"pod": "elsewhere", "text": "not asked for"}),
            "{not json",
        ]
    )
    found = v.parse(out, ["bot-1", "bot-2", "bot-3", "bot-4"])
    assert found["bot-1"] == v.Found("line 1\nline 2\n", skipped=4096)
    assert found["bot-2"].text == "" and "no log file on the volume" in str(found["bot-2"].problem)
    assert found["bot-3"].problem == "cannot read it: bot-3.log: Permission denied"
    assert found["bot-4"].problem == "the reader's output did not name it"
    assert "elsewhere" not in found


@pytest.mark.parametrize(
    ("tail", "expected"), [(None, "a\nb\nc\n"), (2, "b\nc\n"), (0, ""), (9, "a\nb\nc\n")]
)
def test_tail_cuts_like_kubectl_logs(tail: int | None, expected: str) -> None:
    assert v.tail_lines("a\nb\nc\n", tail) == expected


def test_a_reader_prints_less_than_the_kubelet_keeps_of_a_container_log() -> None:
    # the kubelet rotates at 10 MiB by default; `logs` returns the newest file only
    assert v.READER_MAX_BYTES * 1.5 < 10 * 2**20  # with room for JSON's escapes
    assert v.reader_bytes(None, 4) == v.READER_MAX_BYTES // 4
    assert v.reader_bytes(1000, 4) == 1000
    assert v.reader_bytes(None, 0) == v.READER_MAX_BYTES

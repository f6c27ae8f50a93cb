"""End to end on the real node: the operator installed by the Helm chart, the real trainer image,
a tiny llama trained on CPU through the whole lifecycle, pause/resume, faults and bad inputs.

Jobs with ``gpus: 2`` request both (fake) GPUs of the node; with no CUDA device the trainer runs
its two data-parallel processes on CPU (gloo), so GPU queueing is real and training still works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch

from tests.e2e.conftest import RECORDS, SYSTEM_NS, VOLUMES
from tests.harness import REPO_ROOT, Cluster, wait_until

pytestmark = pytest.mark.e2e

CAPTURE = REPO_ROOT / "tests" / "fixtures" / "status" / "captured"


# ------------------------------------------------------------------------------------- helpers


def job_body(
    ns: str,
    name: str,
    *,
    steps: int = 12,
    gpus: int = 0,
    every: int = 3,
    model_path: str = "tiny-llama",
    data_path: str = "data/train.jsonl",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"pvc": "models", "path": model_path},
            "dataset": {"pvc": "models", "path": data_path, "format": "alpaca"},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16},
            "training": {"maxSteps": steps, "learningRate": 0.002, "batchSize": 4,
                         "microBatchSize": 2, "maxSeqLength": 128},
            "resources": {"gpus": gpus, "cpu": "500m", "memory": "3Gi"},
            "checkpoint": {"everySteps": every, "keep": 2},
            "output": {"pvc": "out"},
            "retry": {"limit": 2, "backoffSeconds": 1},
            **spec,
        },
    }  # fmt: skip
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}  # None: leave it out
    return body


def apply_job(cluster: Cluster, ns: str, name: str, **kw: Any) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_body(ns, name, **kw)))


def get(cluster: Cluster, ns: str, kind: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", kind, name, "-n", ns, "-o", "json"))
    return out


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    st: dict[str, Any] = get(cluster, ns, "ftj", name).get("status") or {}
    return st


def step(st: dict[str, Any]) -> int:
    return int((st.get("progress") or {}).get("step") or 0)


def pods(cluster: Cluster, ns: str) -> list[str]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", "finetune.dev/job", "-o", "name")
    return sorted(line.removeprefix("pod/") for line in out.split())


def capture(obj: dict[str, Any]) -> None:
    """With FTO_CAPTURE_STATUS=1, keep one real object per phase for the kstatus tests."""
    if os.environ.get("FTO_CAPTURE_STATUS") != "1":
        return
    phase = (obj.get("status") or {}).get("phase")
    if not phase:
        return
    CAPTURE.mkdir(parents=True, exist_ok=True)
    meta = obj["metadata"]
    keep = {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {k: meta[k] for k in ("name", "generation") if k in meta},
        "spec": obj["spec"],
        "status": obj["status"],
    }
    (CAPTURE / f"{phase.lower()}.yaml").write_text(yaml.safe_dump(keep, sort_keys=False))


def wait_phase(
    cluster: Cluster,
    ns: str,
    name: str,
    phase: str,
    *,
    timeout: float = 180,
    extra: Callable[[dict[str, Any]], bool] = lambda _: True,
    seen: set[str] | None = None,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(cluster, ns, "ftj", name)
        st = obj.get("status") or {}
        if seen is not None and st.get("phase"):
            seen.add(st["phase"])
        if st.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"{name} failed: {st.get('reason')}: {st.get('message')}")
        if st.get("phase") == phase and extra(st):
            capture(obj)
            return st
        return None

    try:
        return wait_until(
            check,
            timeout=timeout,
            interval=0.5,
            message=lambda: (
                f"{name} to be {phase}; status: {json.dumps(status(cluster, ns, name))[:2000]}"
            ),
        )
    except TimeoutError as e:
        if isinstance(e.__cause__, AssertionError):
            raise e.__cause__ from None
        raise


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions", [])}


def events(cluster: Cluster, ns: str, name: str) -> list[str]:
    out = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector",
        f"involvedObject.kind=FineTuneJob,involvedObject.name={name}",
        "-o", "jsonpath={.items[*].reason}",
    )  # fmt: skip
    return out.split()


def logs(cluster: Cluster, ns: str, pod: str) -> str:
    return cluster.kubectl("logs", pod, "-n", ns, check=False)


def output_dir(ns: str, job: str) -> Path:
    return VOLUMES / f"{ns}-out" / job / "output"


def summary(ns: str, job: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((output_dir(ns, job) / "summary.json").read_text())
    return out


def losses(s: dict[str, Any]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in s["losses"]]


def suspend(cluster: Cluster, ns: str, name: str, value: bool) -> None:
    cluster.kubectl("patch", "ftj", name, "-n", ns, "--type", "merge",
                    "-p", json.dumps({"spec": {"suspend": value}}))  # fmt: skip


class Recorder:
    """Every watch event of one list call, from the resourceVersion of a first list (so nothing
    that happens after construction is missed), recorded on a background thread. A watch that
    breaks before ``stop`` fails the test there instead of losing events silently."""

    def __init__(self, list_fn: Callable[..., Any], **kwargs: Any) -> None:
        first = list_fn(**kwargs)
        meta = first["metadata"] if isinstance(first, dict) else first.metadata
        rv = meta["resourceVersion"] if isinstance(meta, dict) else meta.resource_version
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(list_fn, rv, kwargs), daemon=True)
        self._thread.start()

    def _run(self, list_fn: Callable[..., Any], rv: str, kwargs: dict[str, Any]) -> None:
        try:
            for event in self._watch.stream(list_fn, resource_version=rv, timeout_seconds=900,
                                            **kwargs):  # fmt: skip
                self.events.append((event["type"], event["raw_object"]))
        except Exception as exc:  # reported by stop(), unless it ended on purpose
            if not self._stopped.is_set():
                self._error = exc

    def stop(self) -> list[tuple[str, dict[str, Any]]]:
        self._stopped.set()
        self._watch.stop()
        assert self._error is None, f"the watch broke before the test ended: {self._error!r}"
        return list(self.events)


def revision(obj: dict[str, Any]) -> int:
    """The object's resourceVersion as a number. Opaque to clients by contract, but with one etcd
    it is the store's global revision, so it orders writes across kinds (what the test needs)."""
    return int(obj["metadata"]["resourceVersion"])


# --------------------------------------------------------------------------------------- tests


@pytest.mark.e2e_ns("train")
def test_tiny_job_trains_to_success_and_the_adapter_loads(cluster: Cluster, e2e_ns: str) -> None:
    ns = e2e_ns
    prompt = "Add 2 and 3."
    evaluation = {"fraction": 0.2, "everySteps": 4, "prompts": [prompt], "maxNewTokens": 8}
    apply_job(cluster, ns, "tiny", steps=16, every=4, evaluation=evaluation)
    seen: set[str] = set()
    first = wait_phase(cluster, ns, "tiny", "Running", extra=lambda s: step(s) > 0, seen=seen)
    printed = cluster.kubectl("get", "ftj", "tiny", "-n", ns)
    assert printed.split()[:6] == ["NAME", "PHASE", "PROGRESS", "STEP", "LOSS", "ETA"]
    assert "Running" in printed
    later = wait_phase(
        cluster, ns, "tiny", "Running", extra=lambda s: step(s) > step(first), seen=seen
    )
    assert later["progress"]["totalSteps"] == 16
    assert conditions(later)["Ready"] == "True"
    done = wait_phase(cluster, ns, "tiny", "Succeeded", seen=seen)
    assert {"Running", "Succeeded"} <= seen
    assert done["progress"]["step"] == 16 and done["progress"]["percent"] == 100
    assert conditions(done)["Succeeded"] == "True"
    assert [a["reason"] for a in done["attempts"]] == ["Completed"]
    assert {"Starting", "Succeeded"} <= set(events(cluster, ns, "tiny"))

    out = output_dir(ns, "tiny")
    s = summary(ns, "tiny")
    assert s["steps"] == 16 and len(s["losses"]) == 16 and s["backend"] == "transformers"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert s["losses"][-1]["loss"] < s["losses"][0]["loss"]  # it learned something

    # status.output: where the result is and how it went, from the real run
    o = done["output"]
    assert (o["claim"], o["path"], o["latest"], o["run"], o["ready"]) == (
        "out", "tiny/output", "tiny/latest", 0, True
    )  # fmt: skip
    assert o["adapter"] == "tiny/output/adapter" and o["samplesFile"] == "tiny/output/samples.jsonl"
    assert "claim out at tiny/output" in done["message"]
    assert o["summary"]["steps"] == 16 and o["summary"]["tokens"] == s["tokens"] > 0
    assert o["summary"]["evalLoss"] == pytest.approx(s["eval_loss"], rel=1e-9)
    assert done["progress"]["evalLoss"] == pytest.approx(s["eval_loss"], rel=1e-3)  # 4 digits
    assert [e["step"] for e in s["eval_losses"]] == [4, 8, 12, 16]
    assert o["summary"]["bestCheckpoint"].startswith("checkpoints/checkpoint-")
    assert done["data"]["evaluationRecords"] > 0
    full = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert o["samples"] == [{"prompt": prompt, "completion": full["completion"][:500]}]
    assert (VOLUMES / f"{ns}-out" / "tiny" / "latest").resolve() == out.resolve()
    wide = cluster.kubectl("get", "ftj", "tiny", "-n", ns, "-o", "wide").splitlines()
    assert "EVAL LOSS" in wide[0] and f"{done['progress']['evalLoss']:g}" in wide[1]

    # the adapter loads with PEFT on the base model and generates
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = VOLUMES / f"{ns}-models" / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(str(out / "adapter"))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    ids = tok("### Instruction:\nAdd 2 and 3.\n\n### Response:\n", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert isinstance(tok.decode(gen[0][ids["input_ids"].shape[1] :]), str)

    # a restart is a new run in runs/1: status.output and checkpoints name it, latest moves
    cluster.kubectl("annotate", "--overwrite", "ftj", "tiny", "-n", ns,
                    "finetune.dev/restart-requested-at=2026-12-01T00:00:00Z")  # fmt: skip
    again = wait_phase(cluster, ns, "tiny", "Succeeded", timeout=300,
                       extra=lambda st: st.get("run") == 1)  # fmt: skip
    o1 = again["output"]
    assert (o1["path"], o1["adapter"], o1["run"]) == ("tiny/runs/1/output",
                                                      "tiny/runs/1/output/adapter", 1)  # fmt: skip
    assert again["checkpoint"]["path"].startswith("runs/1/checkpoints/checkpoint-")
    assert o1["summary"]["bestCheckpoint"].startswith("runs/1/checkpoints/checkpoint-")
    assert "at tiny/runs/1/output" in again["message"]
    latest = VOLUMES / f"{ns}-out" / "tiny" / "latest"
    assert latest.resolve() == (VOLUMES / f"{ns}-out" / "tiny" / "runs" / "1" / "output").resolve()
    assert (out / "adapter" / "adapter_config.json").is_file()  # run 0's output stays


@pytest.mark.e2e_ns("suspend")
def test_suspend_frees_the_gpus_and_resume_matches_an_uninterrupted_run(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    steps = 400  # a tiny step takes ~0.1 s: long enough to queue a second job and suspend
    # the reference: the same job, uninterrupted
    apply_job(cluster, ns, "ref", steps=steps, gpus=2, every=20)
    wait_phase(cluster, ns, "ref", "Succeeded", timeout=300)
    reference = losses(summary(ns, "ref"))
    assert len(reference) == steps
    cluster.kubectl("delete", "ftj", "ref", "-n", ns, "--wait=true")

    apply_job(cluster, ns, "bot", steps=steps, gpus=2, every=20)
    wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= 1)
    apply_job(cluster, ns, "second", steps=4, gpus=2, every=2)
    queued = wait_phase(cluster, ns, "second", "Queued")
    assert queued["message"].startswith("waiting for 2 nvidia.com/gpu")
    wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= 21)
    suspend(cluster, ns, "bot", True)
    suspended = wait_phase(cluster, ns, "bot", "Suspended", timeout=120)
    assert suspended["attempts"][-1]["reason"] == "Suspended"
    assert suspended["attempts"][-1]["exitCode"] == 10  # checkpointed on SIGTERM, then exited
    ckpt = suspended["checkpoint"]["step"]
    assert 20 <= ckpt < steps
    ckpt_dir = VOLUMES / f"{ns}-out" / "bot" / "checkpoints" / f"checkpoint-{ckpt}"
    assert (ckpt_dir / "COMPLETE").exists(), sorted(p.name for p in ckpt_dir.parent.iterdir())
    assert conditions(suspended)["Suspended"] == "True"
    live = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    assert "bot-1" not in [
        p["metadata"]["name"] for p in live if p["status"]["phase"] in ("Pending", "Running")
    ]  # the suspended pod has ended
    # the GPUs are free: the queued job runs now
    wait_phase(cluster, ns, "second", "Succeeded", timeout=240)

    suspend(cluster, ns, "bot", False)
    done = wait_phase(cluster, ns, "bot", "Succeeded", timeout=300)
    assert [a["reason"] for a in done["attempts"]] == ["Suspended", "Completed"]
    assert f"checkpoint-{ckpt}" in logs(cluster, ns, "bot-2")
    resumed = summary(ns, "bot")
    assert resumed["resumed_from"] == f"checkpoint-{ckpt}"
    assert [s for s, _ in losses(resumed)] == list(range(1, steps + 1))
    # the loss curve is the uninterrupted one, step for step (exact on CPU)
    assert losses(resumed) == reference
    # the resumed attempt used the dataset prepared before the first one: no second tokenization
    assert resumed["prepared_reused"] is True
    bot2 = logs(cluster, ns, "bot-2")
    assert "reusing prepared dataset" in bot2 and "tokenized here" not in bot2
    prepared = VOLUMES / f"{ns}-out" / "bot" / "prepared"
    assert len([d for d in prepared.iterdir() if not d.name.startswith(".")]) == 1


@pytest.mark.e2e_ns("podkill")
def test_force_deleted_pod_resumes_from_the_last_checkpoint(cluster: Cluster, e2e_ns: str) -> None:
    ns = e2e_ns
    apply_job(cluster, ns, "bot", steps=30, every=3)
    before = wait_phase(
        cluster, ns, "bot", "Running",
        extra=lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 3,
    )  # fmt: skip
    cluster.kubectl("delete", "pod", "bot-1", "-n", ns, "--grace-period=0", "--force")
    done = wait_phase(cluster, ns, "bot", "Succeeded", timeout=300)
    reasons = [a["reason"] for a in done["attempts"]]
    assert reasons == ["PodDeleted", "Completed"], done["attempts"]
    assert done["attempts"][0]["pod"] == "bot-1"
    resumed = summary(ns, "bot")["resumed_from"]
    assert resumed and int(resumed.split("-")[1]) >= before["checkpoint"]["step"]
    assert summary(ns, "bot")["steps"] == 30
    assert "PodDeleted" in events(cluster, ns, "bot")


@pytest.mark.e2e_ns("oprestart")
def test_operator_restart_mid_run_makes_no_duplicate_pod(cluster: Cluster, e2e_ns: str) -> None:
    ns = e2e_ns
    apply_job(cluster, ns, "bot", steps=400, every=50)  # outlasts the operator's restart
    before = wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) >= 2)
    selector = "app.kubernetes.io/name=finetune-operator"
    old = cluster.kubectl("get", "pods", "-n", SYSTEM_NS, "-l", selector, "-o", "name").split()
    assert len(old) == 1
    cluster.kubectl("delete", *old, "-n", SYSTEM_NS, "--wait=false")

    def new_operator_ready() -> bool:
        out = json.loads(cluster.kubectl("get", "pods", "-n", SYSTEM_NS, "-l", selector,
                                         "-o", "json"))  # fmt: skip
        return any(
            f"pod/{p['metadata']['name']}" not in old
            and any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", []))
            for p in out["items"]
        )  # fmt: skip

    wait_until(new_operator_ready, timeout=120, message="the new operator pod to be Ready")
    # status keeps advancing under the new operator pod
    wait_phase(cluster, ns, "bot", "Running", extra=lambda s: step(s) > step(before) + 2)
    done = wait_phase(cluster, ns, "bot", "Succeeded", timeout=300)
    assert pods(cluster, ns) == ["bot-1", "bot-prepare"]
    assert [a["reason"] for a in done["attempts"]] == ["Completed"]
    assert done["startTime"] == before["startTime"]


@pytest.mark.e2e_ns("queue")
def test_second_two_gpu_job_is_queued_until_the_first_ends(cluster: Cluster, e2e_ns: str) -> None:
    # The first job trains far longer than the test waits, and the test ends it by deleting it:
    # a first job of a few steps could finish before the second's prepare pod does (seen on a
    # loaded machine), and then the second never queues at all.
    ns = e2e_ns
    apply_job(cluster, ns, "first", steps=5000, gpus=2, every=1000)
    wait_phase(cluster, ns, "first", "Running")
    apply_job(cluster, ns, "second", steps=4, gpus=2, every=2)
    queued = wait_phase(cluster, ns, "second", "Queued")
    assert queued["reason"] == "Unschedulable"
    assert queued["message"].startswith("waiting for 2 nvidia.com/gpu: ")
    assert "Insufficient nvidia.com/gpu" in queued["message"]
    assert conditions(queued)["Ready"] == "True"
    # while the first trains on, the second gets no GPU
    at = step(status(cluster, ns, "first"))
    wait_phase(cluster, ns, "first", "Running", extra=lambda s: step(s) >= at + 2, timeout=300)
    assert status(cluster, ns, "second")["phase"] == "Queued"
    assert "second-1" not in pods(cluster, ns) or (
        get(cluster, ns, "pod", "second-1")["status"]["phase"] == "Pending"
    )
    cluster.kubectl("delete", "ftj", "first", "-n", ns, "--wait=false")
    wait_phase(cluster, ns, "second", "Running", timeout=240)
    # the scheduler counts a terminating pod's GPUs until the pod is gone
    assert "first-1" not in pods(cluster, ns)
    wait_phase(cluster, ns, "second", "Succeeded", timeout=240)
    pod = get(cluster, ns, "pod", "second-1")
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


@pytest.mark.e2e_ns("bad", bad_row=5)
def test_bad_inputs_fail_with_a_named_reason_and_are_not_retried(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    apply_job(cluster, ns, "no-pvc", output={"pvc": "nope"})
    apply_job(cluster, ns, "bad-data")  # the seeded dataset has a broken line 5
    apply_job(cluster, ns, "no-model", model_path="missing-model")
    expect = {"no-pvc": "PVCNotFound", "bad-data": "BadData", "no-model": "ModelNotFound"}
    failed = {name: wait_phase(cluster, ns, name, "Failed", timeout=240) for name in expect}
    for name, reason in expect.items():
        st = failed[name]
        assert st["reason"] == reason, (name, st.get("message"))
        assert conditions(st)["Stalled"] == "True" and conditions(st)["Ready"] == "False"
        assert reason in events(cluster, ns, name), (name, events(cluster, ns, name))
        assert f"{name}-1" not in pods(cluster, ns)  # no training pod, no GPU taken
    assert '"nope"' in failed["no-pvc"]["message"]
    assert re.search(r"\b5\b", failed["bad-data"]["message"]), failed["bad-data"]["message"]
    assert "missing-model" in failed["no-model"]["message"]
    # nothing is retried: the prepare pods ran once, and the jobs stay Failed
    for name in expect:
        st = failed[name]
        assert len(st.get("attempts") or []) <= 1 and not st.get("retryAfter"), st
    assert not [p for p in pods(cluster, ns) if not p.endswith("-prepare")]


# data/big.jsonl: 2,000 alpaca records, line 1,234 without its "output"; mistral-7b/: the
# tiny tokenizer with the config.json of Mistral-7B-v0.3 and no weights (the prepare stage reads
# the config only, so the planner sees a real 7.25B model)
PREPARE_SEED = """finetune-trainer make-dataset /models/data/big.jsonl --records 2000 --seed 1
python3 - <<'PY'
import json, pathlib, shutil
root = pathlib.Path("/models")
big = root / "data" / "big.jsonl"
lines = big.read_text().splitlines()
record = json.loads(lines[1233])
del record["output"]
lines[1233] = json.dumps(record)
big.write_text("\\n".join(lines) + "\\n")
model = root / "mistral-7b"
shutil.copytree(root / "tiny-llama", model)
for weights in model.glob("*.safetensors"):
    weights.unlink()
(model / "config.json").write_text(json.dumps({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
    "eos_token_id": 2,
}))
PY"""


@pytest.mark.e2e_ns("prepare", extra=PREPARE_SEED)
def test_prepare_refuses_bad_data_and_oversized_plans_and_plans_before_the_training_pod(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    kube = cluster.kube()
    jobs = kube.custom
    ftj_events = Recorder(jobs.list_namespaced_custom_object, group="finetune.dev",
                          version="v1alpha1", namespace=ns, plural="finetunejobs")  # fmt: skip
    pod_events = Recorder(kube.core.list_namespaced_pod, namespace=ns)
    apply_job(cluster, ns, "bad-row", data_path="data/big.jsonl")
    apply_job(cluster, ns, "full-7b", model_path="mistral-7b", method="full", gpus=1, lora=None)
    apply_job(cluster, ns, "full-7b-two", model_path="mistral-7b", method="full", gpus=2, lora=None)
    apply_job(cluster, ns, "good", steps=6, every=3)

    refused = ("bad-row", "full-7b", "full-7b-two")
    for name in refused:
        wait_phase(cluster, ns, name, "Failed", timeout=240)
    wait_phase(cluster, ns, "good", "Succeeded", timeout=300)
    ftj_log, pod_log = ftj_events.stop(), pod_events.stop()

    def history(name: str) -> list[dict[str, Any]]:
        return [o for _, o in ftj_log if o["metadata"]["name"] == name]

    def phases(name: str) -> list[str]:
        out: list[str] = []
        for obj in history(name):
            phase = (obj.get("status") or {}).get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    # every refused job failed straight out of Preparing, and never had a training pod
    created = [o for t, o in pod_log if t == "ADDED"]
    for name in refused:
        assert phases(name)[-2:] == ["Preparing", "Failed"], (name, phases(name))
        own = [o["metadata"]["name"] for o in created
               if o["metadata"].get("labels", {}).get("finetune.dev/job") == name]  # fmt: skip
        assert own == [f"{name}-prepare"], (name, own)
    for pod in created:  # the prepare stage is CPU-only
        if pod["metadata"]["name"].endswith("-prepare"):
            for c in pod["spec"]["containers"]:
                limits = (c.get("resources") or {}).get("limits") or {}
                assert "nvidia.com/gpu" not in limits, pod["metadata"]["name"]

    bad = status(cluster, ns, "bad-row")
    assert bad["reason"] == "BadData"
    assert "big.jsonl line 1234: missing field 'output'" in bad["message"], bad
    assert "BadData" in events(cluster, ns, "bad-row")

    # one GPU: only 4-bit fits; two GPUs: the cheapest change may be LoRA split over both
    for name, suggestion in (("full-7b", r"; use qlora"), ("full-7b-two", r"; use q?lora")):
        st = status(cluster, ns, name)
        assert st["reason"] == "PlanRefused", (name, st)
        plan = st["plan"]
        assert plan["fits"] is False and plan["gpuMemoryMiB"] == 12288  # the node's label
        assert plan["parameters"] > 7_000_000_000
        estimate = plan["estimatedGpuMemoryMiB"]
        assert estimate > 12288
        assert f"needs an estimated {estimate:,} MiB per GPU" in st["message"], st["message"]
        assert "12,288 MiB" in st["message"], st["message"]
        assert re.search(suggestion, st["message"]), st["message"]
        assert "PlanRefused" in events(cluster, ns, name)
        assert len(st.get("attempts") or []) <= 1 and not st.get("retryAfter"), st

    # the good job: status.data and status.plan were written before its training pod existed
    training = [revision(o) for o in created if o["metadata"]["name"] == "good-1"]
    assert len(training) == 1, [o["metadata"]["name"] for o in created]
    planned = [
        o
        for o in history("good")
        if (o.get("status") or {}).get("data") and (o.get("status") or {}).get("plan")
    ]
    assert planned, phases("good")
    first = planned[0]
    assert revision(first) < training[0], (revision(first), training[0])
    st = first["status"]
    assert st["data"]["records"] == RECORDS and st["data"]["tokens"] > RECORDS
    assert st["data"]["truncated"] >= 0
    assert st["plan"]["microBatchSize"] == 2 and st["plan"]["gradientAccumulation"] == 2
    until_planned = [
        (o.get("status") or {}).get("phase")
        for o in history("good")
        if revision(o) <= revision(first)
    ]
    assert "Preparing" in until_planned and phases("good")[-1] == "Succeeded", phases("good")
    # the training pod read the prepared dataset, it did not tokenize again
    assert summary(ns, "good")["prepared_reused"] is True
    assert "reusing prepared dataset" in logs(cluster, ns, "good-1")


@pytest.mark.e2e_ns("reject", seed=False)
def test_the_apiserver_rejects_an_invalid_spec(cluster: Cluster, e2e_ns: str) -> None:
    ns = e2e_ns
    body = job_body(ns, "qlora-on-cpu", method="qlora")
    proc = subprocess.run(
        [*kubectl_argv(cluster), "apply", "-f", "-"], check=False, input=json.dumps(body),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "qlora" in proc.stderr and "gpus" in proc.stderr, proc.stderr
    assert not cluster.kubectl("get", "ftj", "-n", ns, "-o", "name").strip()


def kubectl_argv(cluster: Cluster) -> list[str]:
    from tests.harness.cluster import _kubectl_path

    return [_kubectl_path(), "--kubeconfig", cluster.kubeconfig]


@pytest.mark.e2e_ns("delete")
def test_deleting_a_running_job_collects_its_children_and_keeps_user_pvcs(
    cluster: Cluster, e2e_ns: str
) -> None:
    ns = e2e_ns
    apply_job(cluster, ns, "bot", steps=500, every=2)
    wait_phase(cluster, ns, "bot", "Running",
               extra=lambda s: (s.get("checkpoint") or {}).get("step", 0) >= 2)  # fmt: skip
    old_uid = get(cluster, ns, "ftj", "bot")["metadata"]["uid"]
    children = {"pods": ["bot-1"], "cm": ["bot-config", "bot-progress"], "sa": ["bot-trainer"],
                "role": ["bot-trainer"], "rolebinding": ["bot-trainer"]}  # fmt: skip
    for kind, names in children.items():
        for name in names:
            assert get(cluster, ns, kind, name)["metadata"]["name"] == name
    cluster.kubectl("delete", "ftj", "bot", "-n", ns, "--wait=true")

    def children_gone() -> bool:
        out = cluster.kubectl("get", ",".join(children), "-n", ns, "-l",
                              "finetune.dev/job=bot", "-o", "name")  # fmt: skip
        return not out.strip()

    wait_until(children_gone, timeout=120, message="the job's children to be collected")
    for claim in ("out", "models"):
        assert get(cluster, ns, "pvc", claim)["status"]["phase"] == "Bound"
    assert (VOLUMES / f"{ns}-models" / "tiny-llama" / "config.json").is_file()

    # a new job of the same name starts from step 0: the old one's files are moved aside, and its
    # checkpoints then pruned (retention: a deleted job can never be resumed; its prepare result
    # and any output stay)
    apply_job(cluster, ns, "bot", steps=6, every=3)
    wait_phase(cluster, ns, "bot", "Succeeded", timeout=240)
    again = summary(ns, "bot")
    assert again["resumed_from"] is None and [s for s, _ in losses(again)] == list(range(1, 7))
    work = VOLUMES / f"{ns}-out" / "bot"
    aside = work / "superseded" / old_uid
    assert (aside / "prepare-result.json").is_file()  # moved aside, not deleted
    assert not (aside / "checkpoints").exists()  # pruned when the new job's training started
    assert (work / "job-uid").read_text().strip() == get(cluster, ns, "ftj", "bot")["metadata"][
        "uid"
    ]

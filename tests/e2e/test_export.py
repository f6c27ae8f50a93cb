"""End to end: a job that exports after training. The operator moves it to Exporting and runs the
CPU export pod (the real trainer image, its llama.cpp at /opt/llama.cpp, as uid 1000), which
merges the adapter, converts the merged model to a q8_0 GGUF and pushes the adapter as an OCI
artifact. The test reads the files back from the volume (the GGUF's header, llama.cpp's view of
it through the binding built from the same llama.cpp, its tokenizer against the one trained
with) and pulls the artifact back with ORAS from the registry it started on the pod network's
gateway (198.18.0.1, the host side of the node's bridge), credentials from a Secret.

The model has a sentencepiece tokenizer (``make-tiny-model --tokenizer sentencepiece``): the
converter only knows byte-level BPE tokenizers of published models.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import VOLUMES
from tests.e2e.test_lifecycle import apply_job, wait_phase
from tests.harness import Cluster
from tests.harness.registry import dockerconfigjson, pull, running_registry

pytestmark = pytest.mark.e2e

MODEL = "tiny-spm"
SEED = f"finetune-trainer make-tiny-model /models/{MODEL} --arch llama --tokenizer sentencepiece"
GGUF_Q8_0 = 7  # llama.cpp's general.file_type for MOSTLY_Q8_0
POD_GATEWAY = "198.18.0.1"  # hack/lib/common.sh POD_GW: the host, as pods on the bridge see it


def gguf_header(path: Path) -> tuple[bytes, int, int, int]:
    """(magic, version, tensor count, metadata count): GGUF's fixed little-endian header."""
    with path.open("rb") as f:
        magic = f.read(4)
        version, tensors, kvs = struct.unpack("<IQQ", f.read(20))
    return magic, version, tensors, kvs


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e_ns("export", extra=SEED)
def test_export_writes_merged_weights_a_gguf_llama_cpp_loads_and_pushes_the_adapter(
    cluster: Cluster, e2e_ns: str, tmp_path: Path
) -> None:
    ns, job = e2e_ns, "served"
    with running_registry(tmp_path, ip=POD_GATEWAY) as registry:
        secret = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "push", "namespace": ns},
            "stringData": {".dockerconfigjson": dockerconfigjson(registry)},
        }  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
        oci = {
            "repository": f"{registry}/ml/served-adapter", "tag": "v1",
            "credentialsSecretRef": {"name": "push"}, "plainHttp": True,
        }  # fmt: skip
        done, times = train_and_export(cluster, ns, job, oci)
        creds = tmp_path / "dockerconfigjson"
        creds.write_text(dockerconfigjson(registry))
        pulled, digest = pull(registry, f"{oci['repository']}:v1", creds, tmp_path / "pulled")
    print(
        f"\nexport e2e: Exporting after {times['Exporting']:.0f} s, Succeeded after "
        f"{times['Succeeded']:.0f} s (export {times['Succeeded'] - times['Exporting']:.0f} s)"
    )
    assert done["reason"] == "Completed"
    claim = VOLUMES / f"{ns}-out"

    # status.output names both exports by their paths on the claim
    o = done["output"]
    merged_at, gguf_at = f"{job}/output/merged", f"{job}/output/gguf/{job}-Q8_0.gguf"
    assert (o["merged"], o["gguf"]) == (merged_at, gguf_at)
    exports = {e["kind"]: e for e in o["exports"]}
    assert sorted(exports) == ["gguf", "merged", "oci"]
    assert exports["merged"]["location"] == merged_at
    assert exports["gguf"]["location"] == gguf_at
    pushed = f"{registry}/ml/served-adapter:v1"
    assert (exports["oci"]["location"], exports["oci"]["digest"]) == (pushed, digest)
    assert done["message"] == (
        f"training finished; exported merged {merged_at}, gguf {gguf_at}, oci {pushed}@{digest}"
    )
    report = json.loads((claim / job / "output" / "export.json").read_text())
    assert [(r["kind"], r["ok"]) for r in report["results"]] == [
        ("merged", True), ("gguf", True), ("oci", True),
    ]  # fmt: skip

    # the artifact holds the adapter's files, byte for byte
    adapter = claim / job / "output" / "adapter"
    assert pulled == sorted(
        p.name for p in adapter.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    for name in pulled:
        assert (tmp_path / "pulled" / name).read_bytes() == (adapter / name).read_bytes(), name

    # the best evaluated checkpoint is still on the volume (retention keeps it besides keep: 2)
    best = o["summary"]["bestCheckpoint"]
    assert best and (claim / job / best / "COMPLETE").is_file(), best

    # the merged model: plain transformers, no adapter
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    merged = claim / merged_at
    config = AutoConfig.from_pretrained(str(merged))
    with safe_open(str(merged / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not [n for n in names if "lora" in n]

    # the GGUF: whole (digest), GGUF v3 with every tensor of the merged model, and llama.cpp
    # reads it as this llama with the tokenizer it was trained with
    path = claim / gguf_at
    assert exports["gguf"]["digest"] == sha256(path)
    magic, version, tensors, _ = gguf_header(path)
    assert (magic, version, tensors) == (b"GGUF", 3, len(names))

    from tests.harness.llama_cpp import llama_cpp_home

    llama_cpp_home()  # the binding, pointed at the libraries of the same llama.cpp
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False, seed=0)
    meta = llm.metadata
    assert meta["general.architecture"] == "llama"
    assert int(meta["general.file_type"]) == GGUF_Q8_0
    assert int(meta["llama.block_count"]) == config.num_hidden_layers
    assert int(meta["llama.embedding_length"]) == config.hidden_size
    assert llm.n_vocab() == config.vocab_size
    tok = AutoTokenizer.from_pretrained(str(merged))
    prompt = "### Instruction:\nwhat is the code of cat?\n\n### Response:\n"
    ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    assert ids == tok(prompt)["input_ids"]
    generated = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        generated.append(int(token))
        if len(generated) == 4:
            break
    assert len(generated) == 4 and all(0 <= t < config.vocab_size for t in generated)


def train_and_export(
    cluster: Cluster, ns: str, job: str, oci: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Apply the job (merged + q8_0 GGUF + ``oci``), wait through Exporting to Succeeded; returns
    the final status and the seconds after the apply at which each phase was first seen."""
    export = {
        "merged": True, "gguf": {"quantization": "q8_0"}, "oci": oci,
        "cpu": "500m", "memory": "2Gi",
    }  # fmt: skip
    t0 = time.monotonic()
    apply_job(
        cluster, ns, job, steps=8, every=2, model_path=MODEL,
        evaluation={"fraction": 0.2, "everySteps": 2},
        output={"pvc": "out", "export": export},
    )  # fmt: skip
    seen: set[str] = set()
    times: dict[str, float] = {}

    def first_seen(st: dict[str, Any]) -> bool:
        times.setdefault(st.get("phase") or "", time.monotonic() - t0)
        return True

    exporting = wait_phase(cluster, ns, job, "Exporting", timeout=300, seen=seen, extra=first_seen)
    assert exporting["reason"] == "Exporting"
    assert f"exporting merged, gguf q8_0, oci {oci['repository']}:v1" in exporting["message"]
    done = wait_phase(cluster, ns, job, "Succeeded", timeout=300, seen=seen, extra=first_seen)
    assert {"Running", "Exporting", "Succeeded"} <= seen
    return done, times

"""Merged 16-bit export: plain transformers loads it (no peft) and its greedy tokens equal the
base + adapter's; the in-training ``merge_adapter`` path (backends.save_merged) too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.export import gguf
from finetune_trainer.export.run import run_exports, write_report
from finetune_trainer.export.spec import ExportReport, ExportSpec

from .export_helpers import base_plus_adapter, greedy, write_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(tiny_model, tmp_path_factory.mktemp("out") / "adapter")


def _load_plain(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def test_merged_model_generates_what_base_plus_adapter_generates(
    tiny_model: Path, adapter: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer

    spec = ExportSpec(merged=True, dtype="float16")
    report = run_exports(
        spec,
        adapter=adapter,
        out=tmp_path,
        base=str(tiny_model),
        job="t",
        hub_kwargs={},
        tools=gguf.Tools(tmp_path / "unused"),
    )
    assert report.ok, report
    (merged,) = report.results
    assert merged.kind == "merged" and merged.location == "merged"
    assert merged.size_bytes and merged.size_bytes > 0
    # 16-bit safetensors, no LoRA tensors left
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all("lora_" not in k for k in keys)
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert not (tmp_path / "merged" / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    # computed in float32 on both sides: the only difference left is the merge and its rounding
    # to 16 bits (float16 here: bfloat16's 8-bit mantissa flips near-ties of a random model)
    reference = base_plus_adapter(tiny_model, adapter, torch.float32)
    base_only = _load_plain(tiny_model)
    merged_model = _load_plain(tmp_path / "merged")
    expected = greedy(reference, tokenizer)
    assert greedy(merged_model, tokenizer) == expected
    assert greedy(base_only, tokenizer) != expected  # the adapter matters: not a vacuous match


def test_save_merged_in_training_path(tiny_model: Path, adapter: Path, tmp_path: Path) -> None:
    """``output.merge_adapter`` (training pod, transformers backend) writes a loadable merge."""
    import torch
    from transformers import AutoTokenizer

    from finetune_trainer import backends

    peft_model = base_plus_adapter(tiny_model, adapter, torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    expected = greedy(peft_model, tokenizer)
    loaded = backends.Loaded(peft_model, tokenizer, "transformers", "fp32", "llama")
    backends.save_merged(loaded, peft_model, tmp_path / "merged")
    assert greedy(_load_plain(tmp_path / "merged"), tokenizer) == expected


def test_failed_export_is_reported_and_keeps_the_adapter(adapter: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    spec = ExportSpec(merged=True, gguf={"quantization": "q4_k_m"})
    report = run_exports(
        spec,
        adapter=adapter,
        out=tmp_path,
        base=str(tmp_path / "no-such-model"),
        job="t",
        hub_kwargs={},
        tools=gguf.Tools(tmp_path / "no-llama"),
    )
    assert [(r.kind, r.ok) for r in report.results] == [("merged", False), ("gguf", False)]
    assert report.results[1].error == "GGUF needs the merged model, which failed"
    message = report.failure_message()
    assert message is not None and message.startswith("export failed (merged: ")
    assert message.endswith("the trained adapter is kept")
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before
    path = write_report(report, tmp_path)
    assert ExportReport.model_validate(json.loads(path.read_text())) == report

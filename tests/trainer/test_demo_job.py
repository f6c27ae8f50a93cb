"""The demo's job (manifests/samples/demo/job.yaml), trained on CPU exactly as the operator renders
it, answers the demo's questions right: `make demo` must not end on a wrong answer presented as
success. Same model and data as the demo's seed pod (make-tiny-model, make-dataset, seed 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import builders
from finetune_operator import models as m
from finetune_operator.settings import Settings
from finetune_trainer.tiny import ANIMALS, secret_mapping, synthetic_records, write_jsonl
from tests.trainer.conftest import base_config, run_trainer, write_config
from tests.trainer.test_train import prepare_in_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEMO_QUESTIONS = (
    ("quickly, what is the code of fox?", "fox"),
    ("please, what is the code of owl?", "owl"),
)


def test_the_demo_job_answers_the_demo_questions(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.tiny import exact_match_accuracy

    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests/samples/demo/job.yaml").read_text())
    assert doc["spec"]["evaluation"]["prompts"] == [q for q, _ in DEMO_QUESTIONS]
    doc["metadata"] |= {"namespace": "finetune-demo", "uid": "u"}
    rendered = builders.trainer_config(m.parse_job(doc), 1, None, None, Settings())
    work = tmp_path / "work"
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(512, seed=0))
    settings = {key: rendered[key] for key in ("lora", "training", "checkpoint", "evaluation")}
    cfg = write_config(tmp_path / "config.json", base_config(work, tiny_model, data, **settings))
    prepare_in_process(cfg, work, monkeypatch)
    assert run_trainer("train", cfg, work, timeout=600) == 0, (work / "train.log").read_text()[
        -3000:
    ]

    torch.manual_seed(0)
    adapter = work / "output" / "adapter"
    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter)
    )
    key = secret_mapping(0)
    demo = [{"instruction": q, "output": key[a]} for q, a in DEMO_QUESTIONS]
    assert exact_match_accuracy(model, tok, demo) == 1.0
    # what the demo shows from status.output.samples: the trainer's own generations, right too
    samples = [json.loads(x) for x in (work / "output" / "samples.jsonl").read_text().splitlines()]
    assert [s["completion"].strip() for s in samples] == [key[a] for _, a in DEMO_QUESTIONS]
    # and it learned the mapping, not two lucky answers (measured: 69 % of 48 questions)
    every = [
        {"instruction": f"{f}, what is the code of {a}?", "output": key[a]}
        for a in ANIMALS
        for f in ("please", "quickly", "now again")
    ]
    assert exact_match_accuracy(model, tok, every) >= 0.5

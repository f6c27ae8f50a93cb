"""The prepare stage: manifest, reuse by content hash, plan, exit codes and result files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from finetune_trainer import main as cli
from finetune_trainer import prepare as prepare_stage
from finetune_trainer.tiny import synthetic_records, write_jsonl
from tests.trainer.conftest import base_config, progress_reports, write_config


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("FTO_PROGRESS_FILE", str(work / "progress.local.json"))
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(tmp_path / "no-sa"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return work


def prepare(tmp_path: Path, work: Path, model: Path, data: Path, **overrides: object) -> int:
    cfg = write_config(tmp_path / "config.json", base_config(work, model, data, **overrides))
    return cli.main(["prepare", "--config", str(cfg)])


def test_manifest_result_and_reuse(tmp_path: Path, env: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(100, seed=1))
    over = {"dataset": {"validation_split": 0.1}, "training": {"max_seq_length": 40}}
    assert prepare(tmp_path, env, tiny_model, data, **over) == 0
    result = json.loads((env / "prepare-result.json").read_text())
    assert result["ok"] and result["error"] is None and result["reused"] is False
    prepared = env / result["prepared_path"]
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["records"] == 100
    assert (manifest["train_records"], manifest["validation_records"]) == (90, 10)
    assert manifest["truncated"] > 0  # some records are longer than 40 tokens
    assert sum(manifest["histogram"].values()) == 100
    assert manifest["tokens"] == result["data"]["tokens"] > 100 * 20
    assert (prepared / "dataset" / "train").is_dir() and (
        prepared / "dataset" / "validation"
    ).is_dir()
    plan = result["plan"]
    assert plan["fits"] and plan["micro_batch_size"] * plan["gradient_accumulation"] == 8
    assert result["total_steps"] >= 1
    # the same report went to the progress object's prepare.json key
    assert progress_reports(env)["prepare.json"]["dataset_hash"] == result["dataset_hash"]

    # same data + tokenizer + format + length: reused, same hash
    assert prepare(tmp_path, env, tiny_model, data, **over) == 0
    again = json.loads((env / "prepare-result.json").read_text())
    assert again["reused"] is True and again["dataset_hash"] == result["dataset_hash"]
    assert again["total_steps"] == result["total_steps"]

    # a different max length is a different prepared dataset
    over2 = {"dataset": {"validation_split": 0.1}, "training": {"max_seq_length": 64}}
    assert prepare(tmp_path, env, tiny_model, data, **over2) == 0
    third = json.loads((env / "prepare-result.json").read_text())
    assert third["dataset_hash"] != result["dataset_hash"] and third["reused"] is False


def test_bad_record_exit_3_names_row(tmp_path: Path, env: Path, tiny_model: Path) -> None:
    rows = synthetic_records(2000, seed=2)
    del rows[1233]["output"]  # line 1,234
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    assert prepare(tmp_path, env, tiny_model, data) == 3
    result = json.loads((env / "prepare-result.json").read_text())
    assert result["ok"] is False and result["error"]["reason"] == "BadData"
    assert "train.jsonl line 1234: missing field 'output'" in result["error"]["message"]
    assert "line 1234" in (tmp_path / "termination-log").read_text()
    assert progress_reports(env)["prepare.json"]["error"]["reason"] == "BadData"


def test_7b_full_on_12gib_exit_5(
    tmp_path: Path, env: Path, big_model_dir: Callable[[str], Path]
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(20))
    over = {
        "method": "full",
        "gpus": 2,
        "gpu_memory_mib": 12288,
        "training": {"max_seq_length": 2048, "batch_size": 16},
    }
    assert prepare(tmp_path, env, big_model_dir("mistral-7b"), data, **over) == 5
    result = json.loads((env / "prepare-result.json").read_text())
    assert result["error"]["reason"] == "PlanRefused"
    assert "use qlora" in result["error"]["message"]
    assert result["plan"]["fits"] is False and result["plan"]["parameters"] == 7_248_023_552
    assert result["data"]["records"] == 20  # the data was still checked and reported
    log = (tmp_path / "termination-log").read_text()
    assert log.startswith("PlanRefused: does not fit") and "12,288 MiB" in log


def test_7b_qlora_fits_two_12gib_gpus(
    tmp_path: Path, env: Path, big_model_dir: Callable[[str], Path]
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(64))
    over = {
        "method": "qlora",
        "gpus": 2,
        "gpu_memory_mib": 12288,
        "training": {"max_seq_length": 2048, "batch_size": 16, "gradient_checkpointing": True},
    }
    assert prepare(tmp_path, env, big_model_dir("mistral-7b"), data, **over) == 0
    result = json.loads((env / "prepare-result.json").read_text())
    plan = result["plan"]
    assert plan["strategy"] == "ddp" and plan["processes"] == 2
    assert plan["micro_batch_size"] * plan["gradient_accumulation"] * 2 == 16
    rows = result["data"]["train_rows"]  # packed rows of up to 2048 tokens
    assert rows == 2  # 64 records of ~50 tokens pack into two rows
    assert result["total_steps"] == 1


def test_missing_model_exit_4(tmp_path: Path, env: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(5))
    assert prepare(tmp_path, env, tmp_path / "no-model", data) == 4
    assert (
        json.loads((env / "prepare-result.json").read_text())["error"]["reason"] == "ModelNotFound"
    )


def test_bad_config_exit_2(tmp_path: Path, env: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_records(5))
    cfg = base_config(env, tiny_model, data)
    cfg["unknown_key"] = 1
    path = write_config(tmp_path / "config.json", cfg)
    assert cli.main(["prepare", "--config", str(path)]) == 2
    assert "unknown_key" in (tmp_path / "termination-log").read_text()
    cfg = base_config(env, tiny_model, data, version=2)
    assert cli.main(["prepare", "--config", str(write_config(path, cfg))]) == 2
    assert "version 2 is not supported" in (tmp_path / "termination-log").read_text()
    assert cli.main(["prepare", "--config", str(tmp_path / "missing.json")]) == 2


def test_the_plan_follows_the_pods_block_compile_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.config import parse_config

    base = {"version": 1, "job": {"name": "j"}, "model": {"path": "/m"}, "dataset": {"path": "/d"}}
    config = parse_config(base)
    monkeypatch.delenv("UNSLOTH_BLOCK_COMPILE", raising=False)
    assert prepare_stage.plan_backend(config) == "unsloth"
    monkeypatch.setenv("UNSLOTH_BLOCK_COMPILE", "1")
    assert prepare_stage.plan_backend(config) == "unsloth-compiled"
    forced = parse_config({**base, "backend": "transformers"})
    assert prepare_stage.plan_backend(forced) == "transformers"


def test_records_that_tokenize_to_almost_nothing_are_refused_naming_the_tokenizer() -> None:
    """A tokenizer that does not fit the data (seen: a qwen2 config loading Qwen2Tokenizer for a
    word-level vocabulary, 0 tokens per record) must fail the prepare stage, not train on EOS."""
    from finetune_trainer.prepare import Tokenized, tokenization_problem

    empty = Tokenized([[2]] * 5, [[1]] * 5, 0, 0, content_tokens=[0] * 5, words=[40] * 5)
    message = tokenization_problem(empty, "Qwen2Tokenizer")
    assert message is not None and "Qwen2Tokenizer" in message and "median of 0 tokens" in message
    sparse = Tokenized([], [], 0, 0, content_tokens=[5] * 4, words=[100] * 4)
    assert tokenization_problem(sparse, "X") is not None  # 20 tokens for 400 words
    fine = Tokenized([], [], 0, 0, content_tokens=[12, 30, 7], words=[10, 22, 6])
    assert tokenization_problem(fine, "X") is None


def test_hub_token_only_from_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator mounts the token as a file (no HF_TOKEN env); a configured file that is
    absent (Secret or key missing) is a BadConfig, never a silent anonymous download."""
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.errors import ConfigError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("hf_secret\n")
    cfg = base_config(tmp_path, tmp_path, tmp_path / "d.jsonl", hub_token_file=str(token))
    assert prepare_stage.hub_token(TrainerConfig.model_validate(cfg)) == "hf_secret"
    cfg["hub_token_file"] = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"spec\.hubTokenSecretRef"):
        prepare_stage.hub_token(TrainerConfig.model_validate(cfg))

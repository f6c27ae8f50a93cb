"""The config contract model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.config import TrainerConfig, load_config, parse_config
from finetune_trainer.errors import ConfigError

CONTRACT_EXAMPLE = Path(__file__).parents[2] / "docs" / "contract.md"


def example() -> dict[str, Any]:
    """The JSON example of docs/contract.md, section 1."""
    text = CONTRACT_EXAMPLE.read_text()
    start = text.index("```json\n") + len("```json\n")
    raw = text[start : text.index("```", start)].replace('"…"', '"x"')
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def test_contract_example_validates() -> None:
    cfg = parse_config(example())
    assert isinstance(cfg, TrainerConfig)
    assert cfg.method == "qlora" and cfg.gpus == 2 and cfg.training.batch_size == 16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(extra=1), "extra: Extra inputs are not permitted"),
        (lambda c: c["training"].update(batchSize=4), "training.batchSize"),
        (lambda c: c["model"].update(path="/m"), "exactly one of model.name / model.path"),
        (lambda c: c["dataset"].update(url="http://x/y.jsonl"), "exactly one of dataset.url"),
        (lambda c: c["dataset"].update(path=None, url="ftp://x"), "http:// or https://"),
        (lambda c: c.update(method="dora"), "method"),
        (lambda c: c["training"].update(batch_size=0), "training.batch_size"),
        (lambda c: c.pop("version"), "version: Field required"),
    ],
)
def test_invalid_configs(change: Any, message: str) -> None:
    cfg = example()
    change(cfg)
    with pytest.raises(ConfigError, match="invalid config") as err:
        parse_config(cfg)
    assert message in str(err.value)


def test_format_spellings() -> None:
    cfg = example()
    cfg["dataset"]["format"] = "prompt-completion"
    assert parse_config(cfg).dataset.format == "prompt_completion"


def test_load_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")

"""Chat templates: the built-ins, the alpaca template matching the classic prompt, the job's
template put on the tokenizer, and a base model without a template trained on messages whose saved
template reproduces the training tokens exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import chat_templates, prepare
from finetune_trainer import data as datamod
from finetune_trainer.config import DatasetSpec, parse_config
from finetune_trainer.errors import ConfigError
from finetune_trainer.tiny import write_jsonl
from tests.trainer.conftest import base_config, run_trainer, write_config


@pytest.fixture
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def spec(**kw: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"path": "/data/x.jsonl", **kw})


def record(**values: Any) -> datamod.Record:
    return datamod.Record("x.jsonl", "line 1", values)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "chatml",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n",
        ),
        (
            "llama3",
            "<|bos|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
        ),
        (
            "alpaca",
            "<|bos|>Be brief.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4<|end|>",
        ),
    ],
)
def test_built_in_templates_render_a_conversation(tokenizer: Any, name: str, expected: str) -> None:
    chat_templates.install(tokenizer, spec(format="messages", chat_template={"name": name}))
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == expected


@pytest.mark.parametrize("extra", ["", "a list of numbers"])
def test_alpaca_template_renders_the_classic_prompt_token_for_token(
    tokenizer: Any, extra: str
) -> None:
    s = spec(format="alpaca")
    chat_templates.install(tokenizer, s)
    sample = datamod.validate(record(instruction="Sort them", input=extra, output="1 2 3"), s)
    trained = prepare.tokenize([sample], tokenizer, 512)
    user = "Sort them" + (f"\n\n### Input:\n{extra}" if extra else "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": "1 2 3"}]
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == tokenizer.bos_token + sample.prompt  # the text itself, byte for byte
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert list(full_ids) == trained.input_ids[0]
    mask = trained.completion_mask[0]
    assert mask[: len(prompt_ids)] == [0] * len(prompt_ids) and all(mask[len(prompt_ids) :])


def test_alpaca_with_another_template_trains_on_a_conversation(tokenizer: Any) -> None:
    s = spec(format="alpaca", chat_template={"name": "chatml"})
    sample = datamod.validate(record(instruction="Sort", input="3 1", output="1 3"), s)
    assert sample.messages == (("user", "Sort\n\n3 1"), ("assistant", "1 3"))
    classic = datamod.validate(record(instruction="Sort", output="1"), spec(format="alpaca"))
    assert classic.prompt.startswith(chat_templates.ALPACA_PREAMBLE) and not classic.messages


def test_install_inline_and_file_templates(tokenizer: Any, tmp_path: Path) -> None:
    inline = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    s = spec(format="messages", chat_template={"template": inline})
    assert chat_templates.install(tokenizer, s) == "inline"
    assert tokenizer.chat_template == inline
    f = tmp_path / "t.jinja"
    f.write_text(chat_templates.CHATML)
    what = chat_templates.install(
        tokenizer, spec(format="sharegpt", chat_template={"file": str(f)})
    )
    assert what == f"file {f}" and tokenizer.chat_template == chat_templates.CHATML


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"file": "/nonexistent/t.jinja"}, "does the ConfigMap"),
        ({"template": "{% for m in messages %}"}, "does not render"),
        ({"template": "{{ raise_exception('no system role') }}"}, "no system role"),
        ({"template": "   "}, "empty"),
    ],
)
def test_bad_templates_are_bad_config(
    tokenizer: Any, template: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        chat_templates.install(tokenizer, spec(format="messages", chat_template=template))


def test_model_template_kept_for_messages_and_none_for_text(tokenizer: Any) -> None:
    own = tokenizer.chat_template
    assert chat_templates.install(tokenizer, spec(format="messages")) is None
    assert chat_templates.install(tokenizer, spec(format="text")) is None
    assert tokenizer.chat_template == own


def test_config_wants_exactly_one_template_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        spec(format="messages", chat_template={"name": "chatml", "template": "x"})
    with pytest.raises(ValueError):
        spec(format="messages", chat_template={"name": "vicuna"})


def base_model_without_template(tiny_model: Path, target: Path) -> Path:
    shutil.copytree(tiny_model, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = target / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return target


def chats(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer with the sum."},
                {"role": "user", "content": f"{i} plus {i % 7}"},
                {"role": "assistant", "content": f"{i + i % 7}"},
            ]
        }
        for i in range(n)
    ]


def test_base_model_without_template_fails_with_the_field_to_set(
    tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    base = base_model_without_template(tiny_model, tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    assert not tok.chat_template
    sample = datamod.validate(record(**chats(1)[0]), spec(format="messages"))
    with pytest.raises(ConfigError, match=r"spec\.dataset\.chatTemplate"):
        datamod.segments(sample, tok)


@pytest.mark.slow
def test_messages_on_a_base_model_saved_template_reproduces_training(
    tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    base = base_model_without_template(tiny_model, tmp_path / "base")
    work = tmp_path / "work"
    records = chats(24)
    data = write_jsonl(tmp_path / "chats.jsonl", records)
    cfg = base_config(
        work,
        base,
        data,
        dataset={"format": "messages", "chat_template": {"name": "chatml"}},
        training={"max_steps": 2, "batch_size": 4, "packing": False},
        tracking={"tensorboard": False},
    )
    parse_config(cfg)
    path = write_config(tmp_path / "config.json", cfg)
    assert run_trainer("train", path, work) == 0, (work / "train.log").read_text()[-3000:]

    summary = json.loads((work / "output" / "summary.json").read_text())
    assert summary["chat_template"] == "built-in chatml"
    adapter = work / "output" / "adapter"
    assert (adapter / "chat_template.jinja").read_text() == chat_templates.CHATML
    saved = AutoTokenizer.from_pretrained(adapter)
    rows = prepare.load_prepared(Path(summary["prepared"]))["train"]
    trained = {tuple(r["input_ids"]): r["completion_mask"] for r in rows}
    assert len(trained) == len(records)
    for r in records:
        messages = r["messages"]
        ids = saved.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert tuple(ids) in trained, saved.apply_chat_template(messages, tokenize=False)
        prompt = saved.apply_chat_template(
            messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        prompt_ids = list(prompt["input_ids"])
        mask = trained[tuple(ids)]
        assert list(ids[: len(prompt_ids)]) == prompt_ids  # inference prompt == training prompt
        assert mask[: len(prompt_ids)] == [0] * len(prompt_ids) and all(mask[len(prompt_ids) :])

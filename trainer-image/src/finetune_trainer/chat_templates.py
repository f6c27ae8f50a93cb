"""Chat templates: the one a job trains with is the one saved with its adapter.

``spec.dataset.chatTemplate`` names a built-in template (chatml, llama3, alpaca), gives a Jinja
template inline, or a ConfigMap key mounted as a file. ``install`` puts it on the tokenizer before
any record is formatted, so the prepare stage, the trainer and ``tokenizer.save_pretrained`` (which
writes ``chat_template.jinja`` next to the adapter) all see the same text; inference with
``apply_chat_template`` then renders exactly the prompts the model was trained on.

Format alpaca without a template trains on the classic Alpaca prompt (data.ALPACA_PROMPT) and saves
the built-in ``alpaca`` template, which renders that prompt byte for byte (a user message holds the
instruction, optionally followed by ``\\n\\n### Input:\\n`` and the input). With another template,
alpaca records become a user/assistant conversation rendered through it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune_trainer.config import ChatTemplateSpec, DatasetSpec
from finetune_trainer.errors import ConfigError

log = logging.getLogger(__name__)

MAX_TEMPLATE_BYTES = 256 * 1024

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

# Renders data.ALPACA_PROMPT (+ ALPACA_INPUT) + ALPACA_RESPONSE + completion + EOS exactly; the
# leading BOS is added only for tokenizers that add one to plain text (as the non-chat path does).
_ALPACA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set turns = messages[1:] %}"
    "{% else %}{{ '" + ALPACA_PREAMBLE + "\\n\\n' }}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] + eos_token }}"
    "{% else %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

BUILT_IN = ("chatml", "llama3", "alpaca")


def alpaca(bos: bool) -> str:
    """The built-in alpaca template, with ``{{ bos_token }}`` first when ``bos``."""
    return ("{{ bos_token }}" if bos else "") + _ALPACA


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts special tokens before plain text (prepare.special_affixes)."""
    with_special = list(tokenizer("x")["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    return len(with_special) > len(plain) and with_special[-len(plain) :] == plain


def built_in(name: str, tokenizer: Any) -> str:
    """The text of a built-in template for this tokenizer."""
    if name == "chatml":
        return CHATML
    if name == "llama3":
        return LLAMA3
    if name == "alpaca":
        return alpaca(adds_bos(tokenizer))
    raise ConfigError(f"unknown chat template {name!r} (built-in: {', '.join(BUILT_IN)})")


def classic_alpaca(spec: DatasetSpec) -> bool:
    """Whether alpaca records train on the classic Alpaca prompt (no other template asked)."""
    t = spec.chat_template
    return spec.format == "alpaca" and (t is None or t.name == "alpaca")


def _read(path: str) -> str:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the chat template file {path} ({exc.strerror}): does the ConfigMap of "
            "spec.dataset.chatTemplate.configMap exist with that key?"
        ) from exc
    if len(raw) > MAX_TEMPLATE_BYTES:
        raise ConfigError(f"the chat template in {path} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the chat template in {path} is not UTF-8 text") from exc


def resolve(spec: ChatTemplateSpec, tokenizer: Any) -> str:
    """The template text ``spec`` names."""
    if spec.name is not None:
        return built_in(spec.name, tokenizer)
    text = spec.template if spec.template is not None else _read(str(spec.file))
    if not text.strip():
        raise ConfigError("the chat template is empty")
    return text


_PROBE = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


def check_renders(tokenizer: Any, what: str) -> None:
    """Render a probe conversation: a template that does not parse or raises is a BadConfig now,
    not an error deep in tokenization. (transformers renders in Jinja's sandbox.)"""
    try:
        tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        tokenizer.apply_chat_template(_PROBE[1:], tokenize=False, add_generation_prompt=False)
    except Exception as exc:
        raise ConfigError(f"the chat template ({what}) does not render: {exc}"[:500]) from exc


def install(tokenizer: Any, spec: DatasetSpec) -> str | None:
    """Put the job's template on ``tokenizer``; returns what it is (for logs and the summary),
    None when the model's own template (or none) stays."""
    if spec.chat_template is not None:
        t = spec.chat_template
        what = f"built-in {t.name}" if t.name else ("inline" if t.template else f"file {t.file}")
        tokenizer.chat_template = resolve(t, tokenizer)
    elif spec.format == "alpaca":
        what = "built-in alpaca"
        tokenizer.chat_template = alpaca(adds_bos(tokenizer))
    else:
        return None
    check_renders(tokenizer, what)
    log.info("chat template: %s (saved with the output)", what)
    return what


__all__ = ["BUILT_IN", "alpaca", "built_in", "classic_alpaca", "install", "resolve"]

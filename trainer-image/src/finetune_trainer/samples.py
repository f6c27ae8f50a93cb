"""Greedy generations of the tuned model for spec.evaluation.prompts, at the end of training.

Each prompt is rendered the way the training data's prompts were (the Alpaca template, the chat
template, or as is), generated from greedily (deterministic: no sampling, no RNG), and recorded in
full in ``samples.jsonl`` next to the output; the final progress report carries them shortened
into ``status.output.samples``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetune_trainer import data
from finetune_trainer.config import TrainerConfig

log = logging.getLogger(__name__)

FILE = "samples.jsonl"
SHORT_PROMPT, SHORT_COMPLETION = 200, 500  # what status.output.samples keeps


def render(prompt: str, fmt: str, tokenizer: Any) -> str:
    """``prompt`` as the model saw prompts in training (format ``fmt``)."""
    if fmt == "alpaca":
        return data.ALPACA_PROMPT.format(instruction=prompt) + data.ALPACA_RESPONSE
    if fmt in ("sharegpt", "messages"):
        return data.render_chat(tokenizer, [("user", prompt)], generation=True)
    return prompt


def generate(model: Any, tokenizer: Any, config: TrainerConfig) -> list[dict[str, str]]:
    """One greedy completion per prompt: ``[{"prompt", "completion"}]`` (full texts)."""
    prompts = config.evaluation.prompts
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    use_cache = getattr(getattr(model, "config", None), "use_cache", None)
    if use_cache is not None:
        model.config.use_cache = True  # generation wants the KV cache training turned off
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    try:
        for prompt in prompts:
            try:
                completion = _one(model, tokenizer, config, prompt, pad=pad, device=device)
            except Exception as exc:  # a sample must never cost the trained output
                log.warning("generation from prompt %.40r failed: %s", prompt, exc)
                completion = f"<generation failed: {type(exc).__name__}: {exc}>"[:300]
            out.append({"prompt": prompt, "completion": completion})
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache
        if was_training:
            model.train()
    log.info("generated from %d prompts", len(out))
    return out


def _one(
    model: Any, tokenizer: Any, config: TrainerConfig, prompt: str, *, pad: Any, device: Any
) -> str:
    """The greedy completion of one prompt, whose tokens are cut to the training length (the
    end kept, where the response starts) so a long prompt cannot exceed the model's context."""
    import torch

    text = render(prompt, config.dataset.format, tokenizer)
    keep = config.training.max_seq_length
    ids = {k: v[:, -keep:].to(device) for k, v in tokenizer(text, return_tensors="pt").items()}
    with torch.no_grad():
        generated = model.generate(
            **ids,
            max_new_tokens=config.evaluation.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    new = generated[0][ids["input_ids"].shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True))


def write(directory: Path, samples: list[dict[str, str]]) -> None:
    """``samples.jsonl`` in ``directory`` (the staged output, published with it)."""
    lines = (json.dumps(s, ensure_ascii=False) for s in samples)
    (directory / FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def short(samples: list[dict[str, str]]) -> list[dict[str, str]]:
    """The shortened copies the progress report carries into status.output.samples."""
    return [
        {"prompt": s["prompt"][:SHORT_PROMPT], "completion": s["completion"][:SHORT_COMPLETION]}
        for s in samples
    ]

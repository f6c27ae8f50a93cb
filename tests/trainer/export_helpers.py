"""A tiny base model with a LoRA adapter that visibly changes its greedy output (random B, not the
zero init), written as the trainer writes ``output/adapter``; and greedy generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROMPTS = ["what is the code of cat?", "the dog and the fox", "hello there", "owl bee ant"]
NEW_TOKENS = 12


def write_adapter(base: Path, out: Path, seed: int = 3) -> Path:
    """``out`` = adapter_config.json + adapter_model.safetensors + the tokenizer files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune_trainer.export.merge import copy_tokenizer

    torch.manual_seed(seed)
    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,  # random A and B: the adapter changes the output
        task_type="CAUSAL_LM",
    )
    peft_model: Any = get_peft_model(model, lora)
    peft_model.save_pretrained(str(out))
    copy_tokenizer(base, base, out)  # as the trainer writes it: the tokenizer next to the adapter
    return out


def greedy(model: Any, tokenizer: Any, prompts: list[str] = PROMPTS) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids), on the CPU."""
    import torch

    model.eval()
    outs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **ids,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        outs.append(out[0][ids["input_ids"].shape[1] :].tolist())
    return outs


def base_plus_adapter(base: Path, adapter: Path, dtype: Any) -> Any:
    """The unmerged reference: the base with the adapter applied by peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter))

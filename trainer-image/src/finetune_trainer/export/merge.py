"""Base + LoRA adapter → merged 16-bit safetensors that plain transformers loads.

The base is loaded fresh in float32 on the CPU (a qlora adapter is merged into the unquantised
weights, which is the correct merge), the adapter applied with peft and folded in with
``merge_and_unload``; the result is cast to 16 bits and saved as safetensors. The tokenizer files
are copied byte for byte from the adapter (its chat template is the one used in training); a
``tokenizer.model`` (sentencepiece) the adapter lacks comes from a local base directory, since
llama.cpp's converter reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from finetune_trainer import files
from finetune_trainer.prepare import TOKENIZER_FILES


def merge(base: str, adapter: Path, out_dir: Path, dtype: str, hub_kwargs: dict[str, Any]) -> Path:
    """Write the merged model into ``out_dir`` atomically (staging, then rename)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **hub_kwargs)
    peft_model: Any = PeftModel.from_pretrained(model, str(adapter))
    merged: Any = peft_model.merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    staging = files.staging_dir(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging), safe_serialization=True)
    copy_tokenizer(adapter, Path(base), staging)
    files.publish(staging, out_dir)
    return out_dir


def copy_tokenizer(adapter: Path, base: Path, out: Path) -> list[str]:
    """Copy the tokenizer files of the adapter (else of a local base) into ``out``."""
    copied = []
    for name in TOKENIZER_FILES:
        for source in (adapter / name, base / name):
            if source.is_file():
                shutil.copyfile(source, out / name)
                copied.append(name)
                break
    return copied

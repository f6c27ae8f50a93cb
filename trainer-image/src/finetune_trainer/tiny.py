"""Tiny models, tokenizers and a learnable synthetic dataset, built locally (no hub).

Tests and the demo train on a random-initialised model of a real architecture (llama, mistral,
qwen2, qwen3, gemma) with a byte-level BPE tokenizer trained here, and on a synthetic instruction
task a two-layer model learns in a few dozen steps. llama.cpp's GGUF converter recognises a
byte-level BPE only by a hash of a known model's pre-tokenizer, so a model meant for GGUF export
gets a sentencepiece tokenizer (``tokenizer.model``, what Llama 2 and Mistral ship) instead.
The named geometries (a ~1B Llama-3.2-like and a 7B Mistral-like config) give the planner real
parameter counts without any weights.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
}

SPECIAL_TOKENS = [
    "<|pad|>",
    "<|bos|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Geometries of real models (config.json fields), for planner tests and meta-device builds.
NAMED_GEOMETRIES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
    },
    "mistral-7b": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
    },
}

# The synthetic task: "<filler words>, what is the code of <animal>?" -> "<colour>", a fixed
# secret mapping the model must learn, behind random filler words it must learn to ignore. Held-out
# records (another seed) use filler combinations never seen in training.
ANIMALS = [
    "cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig", "hen", "elk", "yak", "ram",
    "bat", "eel", "emu", "gnu",
]  # fmt: skip
COLOURS = [
    "red", "blue", "green", "black", "white", "pink", "gold", "grey", "tan", "teal", "navy",
    "plum", "lime", "rust", "jade", "ruby",
]  # fmt: skip
FILLER = ["please", "quickly", "now", "today", "kindly", "again", "here", "also", "just", "then"]


def secret_mapping(seed: int = 0) -> dict[str, str]:
    colours = list(COLOURS)
    random.Random(seed).shuffle(colours)
    return dict(zip(ANIMALS, colours, strict=True))


def synthetic_records(n: int, seed: int = 0, *, mapping_seed: int = 0) -> list[dict[str, str]]:
    """``n`` alpaca records of the synthetic task (deterministic given the seeds)."""
    rng = random.Random(seed)
    mapping = secret_mapping(mapping_seed)
    out = []
    for _ in range(n):
        animal = rng.choice(ANIMALS)
        filler = " ".join(rng.sample(FILLER, k=rng.randint(1, 3)))
        out.append(
            {"instruction": f"{filler}, what is the code of {animal}?", "output": mapping[animal]}
        )
    return out


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def _tokenizer_corpus() -> list[str]:
    from finetune_trainer.data import ALPACA_INPUT, ALPACA_PROMPT, ALPACA_RESPONSE

    corpus = [r["instruction"] + " " + r["output"] for r in synthetic_records(2000, seed=1234)]
    corpus += [ALPACA_PROMPT + ALPACA_INPUT + ALPACA_RESPONSE] * 50
    corpus += ["The quick brown fox jumps over the lazy dog. 0123456789 Hello, world!"] * 20
    return corpus


def train_tokenizer(vocab_size: int = 512, corpus: Sequence[str] | None = None) -> Any:
    """A byte-level BPE tokenizer with BOS/EOS/PAD and a chat template (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus or _tokenizer_corpus()), trainer=trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    fast_class: Any = PreTrainedTokenizerFast  # untyped constructor
    fast = fast_class(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_sentencepiece(out: Path, vocab_size: int = 512) -> Any:
    """A sentencepiece BPE (byte fallback; <unk>=0, <s>=1, </s>=2, no pad) trained here, written
    as ``out/tokenizer.model`` next to transformers' own files (``LlamaTokenizer``)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus()),
        model_prefix=str(out / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",  # as Llama 2: no NFKC, newlines stay bytes
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "add_bos_token": True,
            }
        )
    )
    return AutoTokenizer.from_pretrained(str(out))


def tiny_config(
    arch: str = "llama",
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 1024,
) -> dict[str, Any]:
    """config.json fields of a tiny model of ``arch``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return {
        "model_type": arch,
        "architectures": [ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": arch == "gemma",
        # A frozen random output head at the usual 0.02 scale caps every logit near zero (the final
        # RMSNorm bounds the hidden state), so LoRA alone could never make confident predictions.
        "initializer_range": 0.2,
    }


def build_model(config: dict[str, Any], *, meta: bool = False, seed: int = 0) -> Any:
    """A random-initialised (or, with ``meta``, weightless) model from config.json fields."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config)
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    hf_config = AutoConfig.for_model(model_type, **fields)
    from_config: Any = AutoModelForCausalLM.from_config  # untyped
    if meta:
        with torch.device("meta"):
            return from_config(hf_config)
    torch.manual_seed(seed)
    return from_config(hf_config, dtype=torch.float32)


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    vocab_size: int = 512,
    tokenizer: Literal["bpe", "sentencepiece"] = "bpe",
    **geometry: Any,
) -> Path:
    """Write a tiny model + tokenizer (save_pretrained) into ``out_dir``; return the directory."""
    out = Path(out_dir)
    if tokenizer == "sentencepiece":
        tok = train_sentencepiece(out, vocab_size)
    else:
        tok = train_tokenizer(vocab_size)
    config = tiny_config(arch, vocab_size=len(tok), **geometry)
    config.update(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model = build_model(config, seed=seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def exact_match_accuracy(model: Any, tokenizer: Any, records: Sequence[dict[str, str]]) -> float:
    """Share of alpaca records whose greedy completion equals ``output`` (synthetic task check)."""
    import torch

    from finetune_trainer.config import DatasetSpec
    from finetune_trainer.data import Record, validate
    from finetune_trainer.prepare import special_affixes

    spec = DatasetSpec(path="-", format="alpaca")
    prefix, _ = special_affixes(tokenizer)
    correct = 0
    model.eval()
    for i, rec in enumerate(records):
        sample = validate(Record("eval", f"record {i + 1}", rec), spec)
        ids = prefix + list(tokenizer(sample.prompt, add_special_tokens=False)["input_ids"])
        x = torch.tensor([ids], device=model.device)  # the model's device: CPU or a GPU
        with torch.no_grad():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=4,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        text = tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True).strip()
        correct += int(text == rec["output"])
    return correct / max(len(records), 1)

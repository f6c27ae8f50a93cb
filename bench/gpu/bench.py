"""GPU benchmark: plain transformers+PEFT+TRL, Unsloth used directly, and finetune-trainer.

Every run is its own process so peak-memory numbers are clean. Models are random-initialised from
a geometry config and saved to local disk once; data is generated here. Results are JSON lines.

  bench.py peak                                   measure the bf16 matmul ceiling of this GPU
  bench.py make-model --geometry 1b|7b --out DIR  random weights + a word-level tokenizer
  bench.py make-data --shape fixed|realistic --out FILE.jsonl --n N --vocab V
  bench.py run --stack hf|unsloth --model DIR --method lora|qlora|full --data FILE --mb N ...
  bench.py memory --model DIR --method M --seqs 512,2048 --mbs 1,4   peaks for the planner table

FLOP convention (as the peer measurements): model FLOPs per token = 6 * N (N = parameters of the
base model, attention not counted); MFU = 6 * N * real_tokens_per_second / measured bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

T0 = float(os.environ.get("FTO_T0", time.time()))

GEOMETRIES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B geometry (1.236 B parameters)
    "1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    # Mistral-7B-v0.3 geometry (7.248 B parameters)
    "7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
    },
    # held out from the planner's fit (issue 12 item 5): Qwen2.5-3B geometry (tied, 16/2 heads)
    "qwen3b": {
        "model_type": "qwen2",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
    },
    # held out too: Gemma-2-2B geometry (head_dim 256 != hidden / heads, vocab 256,000, tied)
    "gemma2b": {
        "model_type": "gemma2",
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 256000,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
}
# Model types whose AutoTokenizer class ignores tokenizer.json's pipeline and rebuilds a byte-level
# BPE from its vocabulary (transformers 5: qwen2 -> Qwen2Tokenizer). The word-level tokenizer turns
# into one that yields 0 tokens there, so these geometries get a byte-level one (write_tokenizer).
BYTE_LEVEL_TYPES = frozenset({"qwen2", "gemma2"})
# The byte-level data's alphabet: letters only, so Qwen2's split regex keeps a record one pre-token
# and each letter is one token (no merges); 52 symbols are enough for throughput and memory.
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def emit(rec: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(rec), flush=True)
    out = os.environ.get("BENCH_RESULTS")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def cmd_peak(_: argparse.Namespace) -> None:
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    emit({"kind": "peak", "bf16_tflops": round(tflops, 1), "gpu": torch.cuda.get_device_name()})


def cmd_make_model(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    geo = dict(GEOMETRIES[args.geometry])
    out = Path(args.out)
    if (out / "config.json").exists():
        write_tokenizer(out, geo["vocab_size"], geo["model_type"])
        emit({"kind": "make-model", "geometry": args.geometry, "cached": True})
        return
    t = time.time()
    cfg = AutoConfig.for_model(**geo)
    cfg.torch_dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    write_tokenizer(out, geo["vocab_size"], geo["model_type"])
    emit(
        {
            "kind": "make-model",
            "geometry": args.geometry,
            "params": n_params,
            "seconds": round(time.time() - t, 1),
        }
    )


def write_tokenizer(out: Path, vocab_size: int, model_type: str = "llama") -> None:
    """The tokenizer the class transformers picks for ``model_type`` loads as written."""
    if model_type in BYTE_LEVEL_TYPES:
        write_byte_tokenizer(out)
    else:
        write_word_tokenizer(out, vocab_size)


def tokenizer_kind(model_dir: str | Path) -> str:
    """Either 'bytes' or 'words': how the bench writes a record's token ids as text."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return "bytes" if cfg.get("model_type") in BYTE_LEVEL_TYPES else "words"


def ids_to_text(ids: list[int], kind: str) -> str:
    """Text that the bench's tokenizer of ``kind`` turns into exactly ``len(ids)`` tokens."""
    if kind == "bytes":
        return "".join(LETTERS[i % len(LETTERS)] for i in ids)
    return " ".join(f"w{i}" for i in ids)


_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def write_byte_tokenizer(out: Path) -> None:
    """A byte-level BPE without merges, built as Qwen2Tokenizer rebuilds one (same split regex,
    same ByteLevel step): every class that reads tokenizer.json or its vocab and merges gets the
    same pipeline, one token per byte. Specials first (ids 0-2), then the 256 byte symbols."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(out)


# transformers' Qwen2Tokenizer split (models/qwen2/tokenization_qwen2.py)
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def write_word_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer covering the whole vocabulary (the data is token ids as words).

    Special tokens own ids 0-3 and no word shares an id with them: a tokenizer.json whose
    vocabulary maps two strings to one id keeps only one of them, chosen by hash order.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(out)


def realistic_lengths(n: int, rng: random.Random, max_len: int) -> list[int]:
    # Alpaca-like: median ~180 tokens, a long tail to max_len (log-normal, sigma 0.9).
    return [max(16, min(max_len, int(rng.lognormvariate(math.log(180), 0.9)))) for _ in range(n)]


def cmd_make_data(args: argparse.Namespace) -> None:
    rng = random.Random(1234)
    lengths = (
        [args.max_len] * args.n
        if args.shape == "fixed"
        else realistic_lengths(args.n, rng, args.max_len)
    )
    with open(args.out, "w") as f:
        for ln in lengths:
            ids = [rng.randrange(4, args.vocab) for _ in range(ln)]
            f.write(json.dumps({"input_ids": ids}) + "\n")
    emit(
        {
            "kind": "make-data",
            "shape": args.shape,
            "n": args.n,
            "mean_len": round(statistics.mean(lengths), 1),
            "median_len": statistics.median(lengths),
        }
    )


class _Counting:
    """Wraps a data collator and counts real (non-padding) tokens of each micro-batch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.tokens += sum(len(f["input_ids"]) for f in features)
        return self.inner(features)


def _train_and_measure(trainer: Any, args: argparse.Namespace, extra: dict[str, Any]) -> None:
    import torch
    from transformers import TrainerCallback

    counter = _Counting(trainer.data_collator)
    trainer.data_collator = counter
    marks: list[tuple[float, int, float]] = []

    class Mark(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            torch.cuda.synchronize()
            marks.append((time.time(), counter.tokens, 0.0))

        def on_log(self, a: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    losses: list[float] = []
    trainer.add_callback(Mark())
    torch.cuda.reset_peak_memory_stats()
    t_train = time.time()
    trainer.train()
    rates = []
    for (t1, k1, _), (t2, k2, _) in zip(
        marks[args.warmup :], marks[args.warmup + 1 :], strict=False
    ):
        rates.append((k2 - k1) / (t2 - t1))
    tps = statistics.median(rates) if rates else float("nan")
    n_params = extra.pop("base_params")
    peak = float(os.environ.get("BENCH_PEAK_TFLOPS", "0") or 0)
    emit(
        {
            "kind": "run",
            **extra,
            "mb": args.mb,
            "seq": args.max_len,
            "tokens_per_second": round(tps),
            "steps_measured": len(rates),
            "first_step_seconds": round(marks[0][0] - T0, 1) if marks else None,
            "load_seconds": round(t_train - T0, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "mfu": round(6 * n_params * tps / (peak * 1e12), 3) if peak else None,
            "losses": [round(x, 4) for x in losses],
        }
    )


def _dataset(path: str) -> Any:
    from datasets import load_dataset

    return load_dataset("json", data_files=path, split="train")


def _sft_config(args: argparse.Namespace, **kw: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=f"/tmp/bench-out-{os.getpid()}",
        per_device_train_batch_size=args.mb,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=True,
        max_length=args.max_len,
        dataset_num_proc=1,
        seed=3407,
        **kw,
    )


def cmd_run(args: argparse.Namespace) -> None:
    if os.environ.get("BENCH_MEMSNAP"):
        from memsnap import start

        start()
    import torch

    if args.cap_gib:
        frac = args.cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(frac)
    ds = _dataset(args.data)
    extra: dict[str, Any] = {
        "stack": args.stack,
        "method": args.method,
        "model": args.model_tag,
        "data": args.data_tag,
        "cap_gib": args.cap_gib,
        "optimizer": args.optim if args.stack == "unsloth" else "adamw_torch_fused",
        "packing": bool(args.packing),
    }
    if args.stack == "unsloth":
        import unsloth  # noqa: F401  (must be imported before transformers/trl, as its docs say)
        from trl import SFTTrainer
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=args.model,
            max_seq_length=args.max_len,
            dtype=None,
            load_in_4bit=args.method == "qlora",
            full_finetuning=args.method == "full",
        )
        extra["base_params"] = _base_params(args.model)
        if args.method != "full":
            model = FastLanguageModel.get_peft_model(
                model,
                r=16,
                lora_alpha=16,
                lora_dropout=0,
                target_modules=TARGETS,
                bias="none",
                use_gradient_checkpointing="unsloth",
                random_state=3407,
            )
        trainer = SFTTrainer(
            model=model,
            processing_class=tok,
            train_dataset=ds,
            args=_sft_config(args, optim=args.optim, packing=bool(args.packing)),
        )
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
        from trl import SFTTrainer

        kw: dict[str, Any] = {
            "dtype": torch.bfloat16,
            "attn_implementation": "sdpa",
            "device_map": {"": 0},
        }
        if args.method == "qlora":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        model = AutoModelForCausalLM.from_pretrained(args.model, **kw)
        tok = AutoTokenizer.from_pretrained(args.model)
        extra["base_params"] = _base_params(args.model)
        if args.method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        if args.method != "full":
            model = get_peft_model(
                model,
                LoraConfig(
                    r=16,
                    lora_alpha=16,
                    lora_dropout=0.0,
                    target_modules=TARGETS,
                    task_type="CAUSAL_LM",
                ),
            )
        trainer = SFTTrainer(
            model=model,
            processing_class=tok,
            train_dataset=ds,
            args=_sft_config(args, gradient_checkpointing=True),
        )
    _train_and_measure(trainer, args, extra)


def _base_params(model_dir: str) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, i, n, v = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_hidden_layers"],
        cfg["vocab_size"],
    )
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * i + 2 * h
    emb = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return n * per_layer + emb + h


def cmd_evict(args: argparse.Namespace) -> None:
    """Drop files from the page cache (posix_fadvise DONTNEED; no root needed): a cold start
    without dropping every cache on the machine. Dirty pages are written first (fsync)."""
    n = 0
    for root in args.paths:
        for f in [Path(root)] if Path(root).is_file() else Path(root).rglob("*"):
            if f.is_file() and not f.is_symlink():
                try:
                    fd = os.open(f, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    n += f.stat().st_size
                except OSError:
                    pass
                finally:
                    os.close(fd)
    print(f"evicted {n / 2**30:.2f} GiB from the page cache", flush=True)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("peak")
    m = sub.add_parser("make-model")
    m.add_argument("--geometry", choices=sorted(GEOMETRIES), required=True)
    m.add_argument("--out", required=True)
    d = sub.add_parser("make-data")
    d.add_argument("--shape", choices=["fixed", "realistic"], required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--n", type=int, default=400)
    d.add_argument("--vocab", type=int, default=32000)
    d.add_argument("--max-len", type=int, default=2048)
    r = sub.add_parser("run")
    r.add_argument("--stack", choices=["hf", "unsloth"], required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--model-tag", default="")
    r.add_argument("--method", choices=["lora", "qlora", "full"], required=True)
    r.add_argument("--data", required=True)
    r.add_argument("--data-tag", default="")
    r.add_argument("--mb", type=int, default=4)
    r.add_argument("--max-len", type=int, default=2048)
    r.add_argument("--steps", type=int, default=25)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--cap-gib", type=float, default=0.0)
    r.add_argument("--optim", default="adamw_8bit", help="(b)'s optimizer (its docs use 8-bit)")
    r.add_argument(
        "--packing",
        action="store_true",
        help="(b'): TRL packing=True, Unsloth's isolated packed path (packed_seq_lengths)",
    )
    e = sub.add_parser("evict")
    e.add_argument("paths", nargs="+")
    a = p.parse_args(argv)
    commands = {
        "peak": cmd_peak,
        "make-model": cmd_make_model,
        "make-data": cmd_make_data,
        "run": cmd_run,
        "evict": cmd_evict,
    }
    commands[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])

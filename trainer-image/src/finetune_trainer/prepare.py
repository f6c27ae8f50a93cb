"""The prepare stage: check the data, tokenize once, plan memory, refuse what cannot work.

Runs on CPU before any GPU is taken (``finetune-trainer prepare``). Validates every record, applies
the prompt format / chat template, tokenizes with the model's tokenizer and saves the result
(datasets Arrow + manifest.json) under ``<work>/prepared/<content-hash>/``. The hash covers the data
bytes, the tokenizer, the format and the length limit, so a repeated or resumed job reuses it. Then
reads the model's config.json (no weights), runs the planner and writes ``prepare-result.json`` and
the ``prepare.json`` key of the progress ConfigMap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import chat_templates, diskfull, hubcache, netfaults, planner, stop, workdir
from finetune_trainer import data as datamod
from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import (
    ConfigError,
    DataError,
    ModelNotFoundError,
    PlanRefusedError,
    TrainerError,
)

log = logging.getLogger(__name__)

PREPARE_VERSION = 2  # bump when the tokenized layout changes, so old prepared data is not reused
RESULT_FILE = "prepare-result.json"
MANIFEST = "manifest.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


# ----------------------------------------------------------------------------- model artefacts


def hub_token(config: TrainerConfig) -> str | None:
    """The hub token from the mounted secret file (a missing one is a BadConfig: the Secret or its
    key does not exist), else HF_TOKEN; never logged."""
    if config.hub_token_file:
        try:
            return Path(config.hub_token_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(
                f"cannot read the hub token file {config.hub_token_file} ({exc.strerror}): does "
                "the Secret of spec.hubTokenSecretRef exist with that key?"
            ) from exc
    return os.environ.get("HF_TOKEN") or None


def load_tokenizer(config: TrainerConfig) -> Any:
    from transformers import AutoTokenizer

    m = config.model
    if m.path is not None and not Path(m.path).is_dir():
        raise ModelNotFoundError(f"model directory {m.path} does not exist")
    cache_dir, revision = hubcache.hub_source(config)
    try:
        tok = AutoTokenizer.from_pretrained(
            m.source,
            revision=revision,
            token=hub_token(config),
            cache_dir=cache_dir,
            trust_remote_code=m.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise netfaults.hub_failure(exc, f"cannot load the tokenizer of {m.source}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    chat_templates.install(tok, config.dataset)  # before formatting; saved with the output
    return tok


def load_model_config(config: TrainerConfig) -> dict[str, Any]:
    """The model's config.json (local directory or one file from the hub; never weights)."""
    m = config.model
    if m.path is not None:
        path = Path(m.path) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        cache_dir, revision = hubcache.hub_source(config)
        try:
            path = Path(
                hf_hub_download(
                    str(m.name),
                    "config.json",
                    revision=revision,
                    token=hub_token(config),
                    cache_dir=cache_dir,
                )
            )
        except Exception as exc:
            raise netfaults.hub_failure(exc, f"cannot fetch config.json of {m.name}") from exc
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc}") from exc
    return loaded


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's saved files (what tokenization depends on)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in sorted(os.listdir(tmp)):
            if name in TOKENIZER_FILES:
                h.update(name.encode() + b"\0" + (Path(tmp) / name).read_bytes())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- tokenizing


@dataclass
class Tokenized:
    input_ids: list[list[int]]
    completion_mask: list[list[int]]
    truncated: int
    without_trainable: int
    content_tokens: list[int] = field(default_factory=list)  # per sample, without BOS/EOS
    words: list[int] = field(default_factory=list)  # whitespace-separated words per sample


# A tokenizer that does not match the data (e.g. a class other than the files describe) can turn
# whole records into no tokens at all, and training then learns only the appended EOS: refuse.
MIN_MEDIAN_TOKENS = 3
MIN_TOKENS_PER_WORD = 0.25


def tokenization_problem(tok: Tokenized, tokenizer_class: str) -> str | None:
    """Why these records cannot be trained on as tokenized (None when they can)."""
    if not tok.content_tokens:
        return None
    median = statistics.median(tok.content_tokens)
    tokens, words = sum(tok.content_tokens), sum(tok.words)
    if median < MIN_MEDIAN_TOKENS or (words and tokens < MIN_TOKENS_PER_WORD * words):
        return (
            f"the records tokenize to almost nothing with {tokenizer_class}: a median of "
            f"{median:g} tokens per record and {tokens:,} tokens for {words:,} words; the "
            "tokenizer does not fit this data (check the model's tokenizer files and "
            "tokenizer_config.json)"
        )
    return None


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prefix, suffix) ids for the non-chat formats: the tokenizer's own BOS, and EOS."""
    with_special = list(tokenizer("x")["input_ids"])
    plain = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    prefix: list[int] = []
    if with_special[-len(plain) :] == plain:
        prefix = with_special[: len(with_special) - len(plain)]
    suffix = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prefix, suffix


def tokenize(
    samples: Sequence[datamod.Sample], tokenizer: Any, max_len: int, chunk: int = 2048
) -> Tokenized:
    """Token ids + completion mask per sample (a chunk's segments are tokenized in one batch)."""
    prefix, suffix = special_affixes(tokenizer)
    out = Tokenized([], [], 0, 0)
    for start in range(0, len(samples), chunk):
        batch = samples[start : start + chunk]
        segs = [datamod.segments(s, tokenizer) for s in batch]
        flat = [text for ss in segs for text, _ in ss]
        encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        k = 0
        for sample, ss in zip(batch, segs, strict=True):
            ids: list[int] = []
            mask: list[int] = []
            out.words.append(sum(len(text.split()) for text, _ in ss))
            out.content_tokens.append(sum(len(encoded[k + j]) for j in range(len(ss))))
            if not sample.messages:
                ids += prefix
                mask += [0] * len(prefix)
            for _, trainable in ss:
                piece = encoded[k]
                k += 1
                ids += piece
                mask += [int(trainable)] * len(piece)
            if not sample.messages:
                ids += suffix
                mask += [1] * len(suffix)
            if len(ids) > max_len:
                out.truncated += 1
                ids, mask = ids[:max_len], mask[:max_len]
            if not any(mask):
                out.without_trainable += 1
            out.input_ids.append(ids)
            out.completion_mask.append(mask)
    return out


def histogram(lengths: Sequence[int], max_len: int) -> dict[str, int]:
    """Counts of sequence lengths in power-of-two buckets up to ``max_len``."""
    edges = []
    e = 32
    while e < max_len:
        edges.append(e)
        e *= 2
    edges.append(max_len)
    counts = dict.fromkeys(edges, 0)
    for n in lengths:
        for edge in edges:
            if n <= edge:
                counts[edge] += 1
                break
    out: dict[str, int] = {}
    low = 1
    for edge in edges:
        out[f"{low}-{edge}"] = counts[edge]
        low = edge + 1
    return out


# ----------------------------------------------------------------------------------- the stage


def content_hash(config: TrainerConfig, data_fingerprint: str, tok_fingerprint: str) -> str:
    d = config.dataset
    key = {
        "version": PREPARE_VERSION,
        "data": data_fingerprint,
        "tokenizer": tok_fingerprint,
        "format": d.format,
        "fields": dict(sorted(d.fields.items())),
        "max_seq_length": config.training.max_seq_length,
        "validation_split": d.validation_split,
        "seed": config.training.seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of ``n`` records: ``fraction`` of them drawn by ``seed``
    (the same rows for the same data and seed), at least one left to train on."""
    order = list(range(n))
    n_val = round(n * fraction)
    if n_val:
        random.Random(seed).shuffle(order)
        n_val = min(n_val, n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def without_leaks(
    train_ids: Sequence[Sequence[int]],
    train_idx: list[int],
    eval_ids: Sequence[Sequence[int]],
    eval_idx: list[int],
) -> tuple[list[int], int]:
    """The evaluation rows that are not a training row too (same tokens), and how many were
    dropped: a duplicated record must not be trained on and then scored as held out."""
    seen = {tuple(train_ids[i]) for i in train_idx}
    kept = [i for i in eval_idx if tuple(eval_ids[i]) not in seen]
    return kept, len(eval_idx) - len(kept)


@dataclass
class Prepared:
    path: Path
    manifest: dict[str, Any]
    reused: bool


def build_dataset(config: TrainerConfig, tokenizer: Any) -> Prepared:
    """Validate + tokenize the dataset into ``prepared/<hash>/`` (or reuse it)."""
    import datasets

    started = time.monotonic()
    work = config.work
    source = datamod.resolve_source(config.dataset, work)
    ev = config.evaluation.dataset
    eval_source = datamod.resolve_source(ev, work) if ev is not None else None
    fingerprint = source.fingerprint()
    if eval_source is not None:
        fingerprint += ":eval:" + eval_source.fingerprint()
    digest = content_hash(config, fingerprint, tokenizer_fingerprint(tokenizer))
    final = work / "prepared" / digest
    if (final / MANIFEST).exists():
        manifest = json.loads((final / MANIFEST).read_text())
        log.info("reusing prepared dataset %s (%d records)", final, manifest["records"])
        return Prepared(final, manifest, True)

    token = hub_token(config)
    cache = Path(config.paths.model_cache) / "datasets"
    samples = datamod.validate_all(source.records(config.dataset, cache, token), config.dataset)
    max_len = config.training.max_seq_length
    tok = tokenize(samples, tokenizer, max_len)
    problem = tokenization_problem(tok, type(tokenizer).__name__)
    if problem:
        raise DataError(problem)
    lengths = [len(ids) for ids in tok.input_ids]

    if ev is not None and eval_source is not None:
        held = tokenize(datamod.validate_all(eval_source.records(ev, cache, token), ev),
                        tokenizer, max_len)  # fmt: skip
        train_idx, val_idx = list(range(len(samples))), list(range(len(held.input_ids)))
    else:
        held = tok
        train_idx, val_idx = held_out(len(samples), config.dataset.validation_split,
                                      config.training.seed)  # fmt: skip
    val_idx, leaked = without_leaks(tok.input_ids, train_idx, held.input_ids, val_idx)
    if leaked:
        log.warning("%d evaluation rows are identical to training rows: not evaluated", leaked)

    def subset(t: Tokenized, idx: list[int]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "input_ids": [t.input_ids[i] for i in idx],
                "completion_mask": [t.completion_mask[i] for i in idx],
            }
        )

    splits = {"train": subset(tok, train_idx)}
    if val_idx:
        splits["validation"] = subset(held, val_idx)
    manifest = {
        "records": len(samples),
        "train_records": len(train_idx),
        "validation_records": len(val_idx),
        "validation_duplicates_dropped": leaked,
        "tokens": sum(lengths),
        "trainable_tokens": sum(sum(m) for m in tok.completion_mask),
        "truncated": tok.truncated,
        "without_trainable_tokens": tok.without_trainable,
        "max_length": max(lengths),
        "mean_length": round(sum(lengths) / len(lengths), 2),
        "histogram": histogram(lengths, max_len),
        "format": config.dataset.format,
        "max_seq_length": max_len,
        "dataset_hash": digest,
        "prepare_version": PREPARE_VERSION,
        "prepare_seconds": 0.0,
    }
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{digest}-"))
    try:
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "dataset"))
        manifest["prepare_seconds"] = round(time.monotonic() - started, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)  # atomic: a half-written directory is never seen as prepared
        except OSError:
            if not (final / MANIFEST).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent prepare won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "prepared %d records, %d tokens (%d truncated) in %.1fs -> %s",
        manifest["records"], manifest["tokens"], manifest["truncated"],
        manifest["prepare_seconds"], final,
    )  # fmt: skip
    return Prepared(final, manifest, False)


def load_prepared(path: Path) -> Any:
    import datasets

    return datasets.load_from_disk(str(path / "dataset"))


def plan_backend(config: TrainerConfig) -> planner.PlanBackend:
    """What the GPU pod will run: unsloth unless transformers is asked for, with its per-block
    compile when the pod's env turns it on (both pods get spec.podTemplate.env)."""
    if config.backend == "transformers":
        return "transformers"
    return "unsloth-compiled" if os.environ.get("UNSLOTH_BLOCK_COMPILE") == "1" else "unsloth"


def make_plan(config: TrainerConfig, model_config: dict[str, Any]) -> planner.Plan:
    try:
        geometry = planner.Geometry.from_config(model_config)
    except ValueError as exc:
        raise ModelNotFoundError(f"model {config.model.source}: {exc}") from exc
    t = config.training
    request = planner.PlanRequest(
        geometry=geometry,
        method=config.method,
        batch_size=t.batch_size,
        max_seq_length=t.max_seq_length,
        gpus=config.gpus,
        gpu_memory_mib=config.gpu_memory_mib if config.gpus > 0 else None,
        lora_r=config.lora.r,
        target_modules=tuple(config.lora.target_modules) if config.lora.target_modules else None,
        micro_batch_size=t.micro_batch_size,
        gradient_accumulation=t.gradient_accumulation,
        gradient_checkpointing=t.gradient_checkpointing,
        backend=plan_backend(config),
        nodes=config.nodes,
    )
    return planner.plan(request)


def train_rows(config: TrainerConfig, train_dataset: Any) -> int:
    """Rows the trainer's dataloader will see (after packing, when on)."""
    from finetune_trainer.packing import pack

    if config.training.packing:
        return len(pack(train_dataset, config.training.max_seq_length))
    return len(train_dataset)


def run(config: TrainerConfig, report: Any = None) -> dict[str, Any]:
    """The whole stage; returns the result dict (also on failure, then re-raises)."""
    result: dict[str, Any] = {
        "ok": False,
        "data": None,
        "plan": None,
        "total_steps": None,
        "dataset_hash": None,
        "reused": False,
        "error": None,
    }
    interrupted = False
    try:
        workdir.claim(config.work, config.job.uid)
        tokenizer = load_tokenizer(config)
        model_config = load_model_config(config)
        prepared = build_dataset(config, tokenizer)
        m = prepared.manifest
        result["data"] = {k: m[k] for k in ("records", "tokens", "truncated", "histogram")}
        result["data"].update(
            train_records=m["train_records"], validation_records=m["validation_records"]
        )
        result["dataset_hash"] = m["dataset_hash"]
        result["prepared_path"] = str(prepared.path.relative_to(config.work))
        result["reused"] = prepared.reused
        plan = make_plan(config, model_config)
        result["plan"] = plan.to_json()
        if not plan.fits:
            raise PlanRefusedError(plan.message)
        rows = train_rows(config, load_prepared(prepared.path)["train"])
        result["total_steps"] = planner.total_steps(
            rows,
            micro_batch_size=plan.micro_batch_size,
            gradient_accumulation=plan.gradient_accumulation,
            processes=plan.processes * config.nodes,
            epochs=config.training.epochs,
            max_steps=config.training.max_steps,
        )
        result["data"]["train_rows"] = rows
        result["ok"] = True
    except TrainerError as exc:
        result["error"] = {"reason": exc.reason, "message": str(exc)}
        raise
    except stop.Interrupted:
        interrupted = True  # a suspend, not a result: the next prepare pod starts over
        raise
    except Exception as exc:
        full = diskfull.as_disk_full(exc, config.work, config.paths.claim)
        if full is None:
            raise
        result["error"] = {"reason": full.reason, "message": str(full)}
        raise full from exc
    finally:
        if not interrupted:
            write_result(config, result, report)
    return result


def write_result(config: TrainerConfig, result: dict[str, Any], report: Any) -> None:
    config.work.mkdir(parents=True, exist_ok=True)
    path = config.work / RESULT_FILE
    if report is not None:  # first: the operator still learns the reason when the disk is full
        from finetune_trainer.progress import PREPARE_KEY

        report.put(PREPARE_KEY, result)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_result(config: TrainerConfig) -> dict[str, Any] | None:
    path = config.work / RESULT_FILE
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded

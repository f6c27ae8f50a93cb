"""Dataset loading, validation and formatting.

Sources: a local file or directory (jsonl, json, parquet, csv), an HTTP(S) URL (downloaded once
into the work volume and verified, by download.py), or a hub dataset id. Formats: alpaca,
sharegpt, messages (both through the chat template: the model's own or the job's, see
chat_templates.py), prompt_completion, text. Every
record is validated; a bad one is reported with its file, line/row and field. Formatting turns a
record into *segments*: pieces of text, each marked trainable (loss computed) or not (prompt), so
prompt tokens can be masked out of the loss.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import chat_templates, download, netfaults
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
MAX_REPORTED_ERRORS = 5

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n"
)
ALPACA_INPUT = "### Input:\n{input}\n\n"
ALPACA_RESPONSE = "### Response:\n"

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "tool": "tool",
    "function_response": "tool",
    "observation": "tool",
}
CHAT_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from (for error messages)."""

    source: str  # file name or URL or hub id
    position: str  # "line 12", "row 7", "record 3"
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Sample:
    """A validated record in canonical shape.

    ``prompt``/``completion`` for alpaca, prompt_completion and text (prompt empty); ``messages``
    for sharegpt and messages.
    """

    prompt: str = ""
    completion: str = ""
    messages: tuple[tuple[str, str], ...] = ()


Segment = tuple[str, bool]  # (text, trainable)


# --------------------------------------------------------------------------------------- sources


def _cache_dir(work: Path) -> Path:
    return work / "downloads"


def download_policy(spec: DatasetSpec) -> download.Policy:
    """The limits of a URL dataset's download (``dataset.max_bytes`` from the config)."""
    return download.Policy(max_bytes=spec.max_bytes or download.DEFAULT_MAX_BYTES)


def local_files(path: Path) -> list[Path]:
    """The data files at ``path``: the file itself, or the supported files of a directory."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        if not files:
            raise DataError(f"no {'/'.join(SUPPORTED_SUFFIXES)} files in directory {path}")
        return files
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    return [path]


def _read_jsonl(path: Path) -> Iterator[Record]:
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name} line {number}: not valid JSON ({exc.msg})") from exc
            yield Record(path.name, f"line {number}", value)


def _read_json(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        # many ".json" files are really JSON lines
        yield from _read_jsonl(path)
        return
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path.name}: expected a JSON array of records (or one list inside)")
        value = lists[0]
    if not isinstance(value, list):
        raise DataError(f"{path.name}: expected a JSON array of records")
    for number, item in enumerate(value, start=1):
        yield Record(path.name, f"record {number}", item)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path.name}: not a readable parquet file ({exc})") from exc
    number = 0
    for batch in table_file.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield Record(path.name, f"row {number}", row)


def _read_csv(path: Path) -> Iterator[Record]:
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # reader.line_num is the physical line the row ended on (header = line 1)
            yield Record(path.name, f"line {reader.line_num}", row)


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}


def read_file(path: Path) -> Iterator[Record]:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path.name}: unsupported file type (use {', '.join(SUPPORTED_SUFFIXES)})")
    return reader(path)


def read_hub(spec: DatasetSpec, cache_dir: Path, token: str | None) -> Iterator[Record]:
    """Rows of a hub dataset (``datasets.load_dataset``), cached on the model-cache volume."""
    import datasets

    assert spec.hub is not None
    try:
        ds = datasets.load_dataset(
            spec.hub, split=spec.split, token=token, cache_dir=str(cache_dir)
        )
    except (OSError, ValueError) as exc:  # ConnectionError and DatasetNotFoundError are OSErrors
        what = f"hub dataset {spec.hub} (split {spec.split})"
        raise netfaults.hub_failure(exc, what, DataError) from exc
    for number, row in enumerate(ds, start=1):
        yield Record(spec.hub, f"row {number}", row)


@dataclass(frozen=True)
class DataSource:
    """Resolved input: local files (downloaded if a URL), or a hub id."""

    files: tuple[Path, ...]
    hub: str | None = None

    def records(self, spec: DatasetSpec, cache_dir: Path, token: str | None) -> Iterator[Record]:
        if self.hub is not None:
            yield from read_hub(spec, cache_dir, token)
            return
        for path in self.files:
            yield from read_file(path)

    def fingerprint(self) -> str:
        """sha256 of the data bytes (or the hub id + split for hub datasets)."""
        h = hashlib.sha256()
        if self.hub is not None:
            h.update(f"hub:{self.hub}".encode())
        for path in self.files:
            h.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def resolve_source(
    spec: DatasetSpec, work: Path, policy: download.Policy | None = None
) -> DataSource:
    """The data files of ``spec``; a URL is downloaded (verified, cached) into the work volume."""
    if spec.url is not None:
        path = download.fetch(
            spec.url,
            _cache_dir(work),
            sha256=spec.sha256,
            policy=policy or download_policy(spec),
        )
        return DataSource((path,))
    if spec.path is not None:
        return DataSource(tuple(local_files(Path(spec.path))))
    return DataSource((), hub=spec.hub)


# ------------------------------------------------------------------------------------ validation


def _field(spec: DatasetSpec, name: str) -> str:
    return spec.fields.get(name, name)


def _text(record: Record, spec: DatasetSpec, name: str, *, required: bool) -> str:
    column = _field(spec, name)
    where = f"{record.source} {record.position}"
    if not isinstance(record.values, Mapping):
        raise DataError(f"{where}: expected an object with field '{column}'")
    value = record.values.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            state = "missing field" if value is None else "empty field"
            raise DataError(f"{where}: {state} '{column}' (format {spec.format})")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field '{column}' must be a string, got {type(value).__name__}")
    return str(value)


def _messages(record: Record, spec: DatasetSpec) -> tuple[tuple[str, str], ...]:
    where = f"{record.source} {record.position}"
    sharegpt = spec.format == "sharegpt"
    column = _field(spec, "conversations" if sharegpt else "messages")
    role_key = _field(spec, "from" if sharegpt else "role")
    content_key = _field(spec, "value" if sharegpt else "content")
    if not isinstance(record.values, Mapping):
        raise DataError(f"{where}: expected an object with field '{column}'")
    turns = record.values.get(column)
    if turns is None:
        raise DataError(f"{where}: missing field '{column}' (format {spec.format})")
    if isinstance(turns, str):  # CSV cells hold JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: field '{column}' is not a JSON list") from exc
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{column}' must be a non-empty list of turns")
    out: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DataError(f"{where}: {column}[{i}] must be an object")
        raw_role = turn.get(role_key)
        content = turn.get(content_key)
        if raw_role is None:
            raise DataError(f"{where}: missing field '{column}[{i}].{role_key}'")
        if not isinstance(content, str):
            raise DataError(f"{where}: missing field '{column}[{i}].{content_key}'")
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if sharegpt else str(raw_role)
        if role not in CHAT_ROLES:
            raise DataError(f"{where}: {column}[{i}].{role_key} has unknown role {raw_role!r}")
        out.append((role, content))
    if not any(role == "assistant" for role, _ in out):
        raise DataError(f"{where}: field '{column}' has no assistant turn to learn from")
    return tuple(out)


def validate(record: Record, spec: DatasetSpec) -> Sample:
    """Check one record against the format; raise ``DataError`` naming file, row and field."""
    fmt = spec.format
    if fmt == "alpaca":
        instruction = _text(record, spec, "instruction", required=True)
        extra = _text(record, spec, "input", required=False)
        output = _text(record, spec, "output", required=True)
        if not chat_templates.classic_alpaca(spec):  # another template: a conversation
            user = f"{instruction}\n\n{extra}" if extra else instruction
            return Sample(messages=(("user", user), ("assistant", output)))
        prompt = ALPACA_PROMPT.format(instruction=instruction)
        if extra:
            prompt += ALPACA_INPUT.format(input=extra)
        return Sample(prompt=prompt + ALPACA_RESPONSE, completion=output)
    if fmt == "prompt_completion":
        return Sample(
            prompt=_text(record, spec, "prompt", required=True),
            completion=_text(record, spec, "completion", required=True),
        )
    if fmt == "text":
        return Sample(completion=_text(record, spec, "text", required=True))
    return Sample(messages=_messages(record, spec))


def validate_all(records: Iterable[Record], spec: DatasetSpec) -> list[Sample]:
    """Validate every record; report up to ``MAX_REPORTED_ERRORS`` bad ones in one error."""
    samples: list[Sample] = []
    errors: list[str] = []
    bad = 0
    for record in records:
        try:
            samples.append(validate(record, spec))
        except DataError as exc:
            bad += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(str(exc))
    if bad:
        more = f" (and {bad - len(errors)} more bad records)" if bad > len(errors) else ""
        raise DataError("; ".join(errors) + more)
    if not samples:
        raise DataError("the dataset has no records")
    return samples


# ------------------------------------------------------------------------------------ formatting


def render_chat(tokenizer: Any, messages: Sequence[tuple[str, str]], generation: bool) -> str:
    """``messages`` through the tokenizer's chat template (with the generation prompt when
    ``generation``); the same rendering training used."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template; formats sharegpt/messages need one"
        )
    return _render(tokenizer, messages, generation)


def _render(tokenizer: Any, messages: Sequence[tuple[str, str]], generation: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        tokenize=False,
        add_generation_prompt=generation,
    )
    return str(rendered)


def chat_segments(tokenizer: Any, messages: Sequence[tuple[str, str]]) -> list[Segment]:
    """Split a rendered conversation into prompt and assistant segments.

    Renders growing prefixes of the conversation: the text an assistant turn adds after the
    generation prompt is trainable, everything else (system/user turns, role headers) is not.
    Templates whose renderings are not prefixes of each other fall back to training on the whole
    conversation.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template (a base model?); formats "
            "sharegpt/messages need one: set spec.dataset.chatTemplate (e.g. name: chatml)"
        )
    segments: list[Segment] = []
    done = ""
    for i, (role, _) in enumerate(messages):
        if role == "assistant":
            header = _render(tokenizer, messages[:i], True) if i else ""
            full = _render(tokenizer, messages[: i + 1], False)
            if not (header.startswith(done) and full.startswith(header)):
                return [(_render(tokenizer, messages, False), True)]
            segments.append((header[len(done) :], False))
            segments.append((full[len(header) :], True))
            done = full
        else:
            full = _render(tokenizer, messages[: i + 1], False)
            if not full.startswith(done):
                return [(_render(tokenizer, messages, False), True)]
            segments.append((full[len(done) :], False))
            done = full
    return [(text, trainable) for text, trainable in segments if text]


def segments(sample: Sample, tokenizer: Any) -> list[Segment]:
    """The text pieces of a sample, each marked trainable or not."""
    if sample.messages:
        return chat_segments(tokenizer, sample.messages)
    out: list[Segment] = []
    if sample.prompt:
        out.append((sample.prompt, False))
    out.append((sample.completion, True))
    return out

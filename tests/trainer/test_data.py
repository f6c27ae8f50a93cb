"""Data formats, file types, the HTTP download and every malformed-record error."""

from __future__ import annotations

import csv
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import data
from finetune_trainer.config import DatasetSpec
from finetune_trainer.errors import ConfigError, DataError
from finetune_trainer.prepare import tokenize

ALPACA = [
    {"instruction": "Say hi", "input": "", "output": "hi"},
    {"instruction": "Add", "input": "1 2", "output": "3"},
]


def spec(fmt: str = "alpaca", **kw: Any) -> DatasetSpec:
    return DatasetSpec(path="/x", format=fmt, **kw)  # type: ignore[arg-type]


def records(rows: list[Any], name: str = "train.jsonl") -> list[data.Record]:
    return [data.Record(name, f"line {i + 1}", r) for i, r in enumerate(rows)]


def test_alpaca_with_and_without_input() -> None:
    samples = data.validate_all(records(ALPACA), spec())
    assert "### Input:" not in samples[0].prompt
    assert "### Input:\n1 2" in samples[1].prompt
    assert samples[1].prompt.endswith("### Response:\n")
    assert samples[1].completion == "3"


def test_prompt_completion_and_text() -> None:
    pc = data.validate_all(
        records([{"prompt": "Q?", "completion": "A."}]), spec("prompt-completion")
    )
    assert (pc[0].prompt, pc[0].completion) == ("Q?", "A.")
    text = data.validate_all(records([{"text": "just text"}]), spec("text"))
    assert text[0].prompt == "" and text[0].completion == "just text"


def test_field_mapping() -> None:
    rows = [{"question": "Why?", "answer": "Because."}]
    s = data.validate_all(
        records(rows), spec(fields={"instruction": "question", "output": "answer"})
    )
    assert "Why?" in s[0].prompt and s[0].completion == "Because."


def test_sharegpt_roles_are_mapped() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
        ]
    }
    s = data.validate_all(records([row]), spec("sharegpt"))
    assert s[0].messages == (("system", "be brief"), ("user", "hi"), ("assistant", "hello"))


def test_messages_chat_template_masks_only_assistant_text(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = {
        "messages": [
            {"role": "user", "content": "what is the code of cat?"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "and dog?"},
            {"role": "assistant", "content": "blue"},
        ]
    }
    sample = data.validate_all(records([row]), spec("messages"))[0]
    segs = data.segments(sample, tok)
    assert "".join(t for t, _ in segs) == tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in sample.messages], tokenize=False
    )
    trained = [t for t, trainable in segs if trainable]
    assert trained == ["red<|end|>\n", "blue<|end|>\n"]
    out = tokenize([sample], tok, 256)
    trained_text = tok.decode(
        [i for i, m in zip(out.input_ids[0], out.completion_mask[0], strict=True) if m]
    )
    assert trained_text == "red<|end|>\nblue<|end|>\n"


def test_chat_format_without_template_is_a_config_error(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    sample = data.Sample(messages=(("user", "a"), ("assistant", "b")))
    with pytest.raises(ConfigError, match="chat template"):
        data.segments(sample, tok)


def test_tokenize_alpaca_adds_bos_eos_and_masks_prompt(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    sample = data.validate_all(records(ALPACA[:1]), spec())[0]
    out = tokenize([sample], tok, 512)
    ids, mask = out.input_ids[0], out.completion_mask[0]
    assert ids[0] == tok.bos_token_id and mask[0] == 0
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "hi<|end|>"
    short = tokenize([sample], tok, 8)
    assert short.truncated == 1 and len(short.input_ids[0]) == 8
    assert short.without_trainable == 1


# --------------------------------------------------------------------------- malformed records


@pytest.mark.parametrize(
    ("fmt", "row", "message"),
    [
        (
            "alpaca",
            {"instruction": "x"},
            "train.jsonl line 2: missing field 'output' (format alpaca)",
        ),
        ("alpaca", {"instruction": "", "output": "y"}, "line 2: empty field 'instruction'"),
        ("alpaca", {"instruction": ["x"], "output": "y"}, "field 'instruction' must be a string"),
        ("prompt_completion", {"prompt": "p"}, "line 2: missing field 'completion'"),
        ("text", {"body": "t"}, "line 2: missing field 'text'"),
        ("messages", {"messages": []}, "field 'messages' must be a non-empty list"),
        ("messages", {"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
        ("messages", {"messages": [{"role": "user"}]}, "missing field 'messages[0].content'"),
        ("messages", {"messages": [{"role": "robot", "content": "a"}]}, "unknown role 'robot'"),
        ("sharegpt", {"conversations": [{"value": "a"}]}, "missing field 'conversations[0].from'"),
        ("sharegpt", {"messages": []}, "missing field 'conversations'"),
        ("alpaca", ["not", "an", "object"], "expected an object"),
    ],
)
def test_malformed_record_names_file_line_and_field(fmt: str, row: Any, message: str) -> None:
    good = {
        "alpaca": ALPACA[0],
        "prompt_completion": {"prompt": "p", "completion": "c"},
        "text": {"text": "t"},
        "messages": {
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        },
        "sharegpt": {
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]
        },
    }[fmt]
    with pytest.raises(DataError) as err:
        data.validate_all(records([good, row, good]), spec(fmt))
    assert message in str(err.value)


def test_reports_first_bad_records_and_counts_the_rest() -> None:
    rows = [ALPACA[0]] + [{"instruction": "x"}] * 9
    with pytest.raises(DataError) as err:
        data.validate_all(records(rows), spec())
    text = str(err.value)
    assert "line 2:" in text and "line 6:" in text and "line 7:" not in text
    assert "(and 4 more bad records)" in text


# ---------------------------------------------------------------------------------- file types


def write_all_types(d: Path, rows: list[dict[str, str]]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    paths = {
        "jsonl": d / "a.jsonl",
        "json": d / "b.json",
        "parquet": d / "c.parquet",
        "csv": d / "d.csv",
    }
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["json"].write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return paths


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv"])
def test_each_file_type_reads_the_same_records(tmp_path: Path, kind: str) -> None:
    paths = write_all_types(tmp_path, ALPACA)
    got = [r.values for r in data.read_file(paths[kind])]
    assert [dict(g) for g in got] == ALPACA


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("jsonl", "a.jsonl line 3"),
        ("json", "b.json record 3"),
        ("parquet", "c.parquet row 3"),
        ("csv", "d.csv line 4"),
    ],
)
def test_bad_row_position_per_file_type(tmp_path: Path, kind: str, where: str) -> None:
    rows = [*ALPACA, {"instruction": "x", "input": "", "output": ""}]
    paths = write_all_types(tmp_path, rows)
    with pytest.raises(DataError, match=f"{where}: empty field 'output'"):
        data.validate_all(data.read_file(paths[kind]), spec())


def test_invalid_json_line(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(ALPACA[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"x.jsonl line 2: not valid JSON"):
        list(data.read_file(p))


def test_directory_source_and_missing_path(tmp_path: Path) -> None:
    write_all_types(tmp_path / "d", ALPACA)
    src = data.resolve_source(DatasetSpec(path=str(tmp_path / "d")), tmp_path)
    assert [p.suffix for p in src.files] == [".jsonl", ".json", ".parquet", ".csv"]
    with pytest.raises(DataError, match="does not exist"):
        data.resolve_source(DatasetSpec(path=str(tmp_path / "nope.jsonl")), tmp_path)


# ------------------------------------------------------------------------------------ download


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_download_once_and_read(tmp_path: Path, http_server: str) -> None:
    ds = DatasetSpec(url=f"{http_server}/train.jsonl")
    src = data.resolve_source(ds, tmp_path / "work")
    assert src.files[0].parent == tmp_path / "work" / "downloads"
    assert [dict(r.values) for r in src.records(ds, tmp_path, None)] == ALPACA
    again = data.resolve_source(ds, tmp_path / "work")  # cached: no second download
    assert again.files == src.files and again.fingerprint() == src.fingerprint()


def test_http_404_is_bad_data(tmp_path: Path, http_server: str) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        data.resolve_source(DatasetSpec(url=f"{http_server}/missing.jsonl"), tmp_path)

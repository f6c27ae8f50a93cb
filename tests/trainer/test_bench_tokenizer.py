"""The GPU bench's tokenizers really tokenize for every geometry it builds (issue 12 item 5).

transformers picks the tokenizer class from the model's config (qwen2 -> Qwen2Tokenizer, which
rebuilds a byte-level BPE from the vocabulary): the bench's word-level tokenizer turned its text
into 0 tokens there. Each geometry's tokenizer is written, loaded back the way the trainer loads it
(AutoTokenizer on the model directory), and must give each record the token count the bench means.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "bench/gpu/bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("geometry", ["qwen3b", "gemma2b", "1b", "7b"])
def test_every_geometry_tokenizes_records_to_their_length(tmp_path: Path, geometry: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    bench = _bench()
    geo = dict(bench.GEOMETRIES[geometry])
    # the real config's model_type and vocabulary; a tiny body (no weights are written here)
    AutoConfig.for_model(**geo).save_pretrained(tmp_path)
    bench.write_tokenizer(tmp_path, geo["vocab_size"], geo["model_type"])
    tok = AutoTokenizer.from_pretrained(tmp_path)
    kind = bench.tokenizer_kind(tmp_path)
    assert kind == ("bytes" if geo["model_type"] in {"qwen2", "gemma2"} else "words")
    rng = random.Random(7)
    lengths = bench.realistic_lengths(40, rng, 2048)
    ratios = []
    for n in lengths:
        ids = [rng.randrange(4, geo["vocab_size"]) for _ in range(n)]
        got = len(tok(bench.ids_to_text(ids, kind), add_special_tokens=False)["input_ids"])
        ratios.append(got / n)
    # exact by construction; a 2 % band would still catch the 0-token failure (ratio 0)
    assert statistics.median(ratios) == pytest.approx(1.0, rel=0.02), (type(tok).__name__, ratios)
    assert min(ratios) > 0.98, (type(tok).__name__, ratios)
    assert tok.eos_token is not None and tok.eos_token_id is not None
    assert tok.eos_token_id < geo["vocab_size"]
    assert len(tok) <= geo["vocab_size"]


def test_the_qwen2_class_is_the_one_exercised(tmp_path: Path) -> None:
    """The failure lived in Qwen2Tokenizer's rebuild; the test above must go through it."""
    from transformers import AutoConfig, AutoTokenizer

    bench = _bench()
    geo = dict(bench.GEOMETRIES["qwen3b"])
    AutoConfig.for_model(**geo).save_pretrained(tmp_path)
    bench.write_tokenizer(tmp_path, geo["vocab_size"], geo["model_type"])
    assert type(AutoTokenizer.from_pretrained(tmp_path)).__name__ == "Qwen2Tokenizer"
    # and the old word-level tokenizer really fails there (the bug this guards against)
    bench.write_word_tokenizer(tmp_path, 1000)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok("w100 w101 w102", add_special_tokens=False)["input_ids"]) < 3

"""GGUF with llama.cpp's own converter and quantizer (built from the llama-cpp-python sdist by
hack/build-llama-cpp.sh, cached by version), loaded with llama-cpp-python on the CPU.

The tiny Llama here has a sentencepiece tokenizer trained locally: the converter recognises BPE
tokenizers by a hash of known models' outputs, and the byte-level BPE of ``tiny`` is no known
model's. The f16 GGUF must generate the same greedy tokens as the merged model in transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.export import gguf
from finetune_trainer.export.run import run_exports
from finetune_trainer.export.spec import ExportSpec, GgufSpec

from .export_helpers import write_adapter

pytestmark = pytest.mark.slow
PROMPTS = ["what is the code of cat?", "the dog and the fox", "owl bee ant"]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def llama_cpp_home() -> Path:
    """The cached build (cold: compiled here through the repo's script; warm: instant)."""
    from tests.harness.llama_cpp import llama_cpp_home as home

    return home()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer is a sentencepiece model trained here."""
    from finetune_trainer.tiny import make_tiny_model

    out = tmp_path_factory.mktemp("spm") / "tiny-spm-llama"
    return make_tiny_model(out, "llama", seed=1, tokenizer="sentencepiece")


def _ids(model_dir: Path, prompt: str) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    return [1, *sp.encode(prompt)]


def _hf_greedy(model_dir: Path, ids: list[int]) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return [int(t) for t in out[0][len(ids) :]]


def _gguf_greedy(path: Path, ids: list[int]) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False, seed=0)
    tokens: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        tokens.append(int(token))
        if len(tokens) == NEW_TOKENS:
            break
    return tokens


def test_gguf_from_llama_cpp_tools_generates_like_the_merged_model(
    llama_cpp_home: Path, spm_model: Path, tmp_path: Path
) -> None:
    adapter = write_adapter(spm_model, tmp_path / "output" / "adapter")
    out = tmp_path / "output"
    tools = gguf.Tools(llama_cpp_home)
    report = run_exports(
        ExportSpec(gguf=GgufSpec(quantization="q4_k_m"), dtype="float16"),
        adapter=adapter,
        out=out,
        base=str(spm_model),
        job="support-bot",
        hub_kwargs={},
        tools=tools,
    )
    assert report.ok, report
    _merged, quantized = report.results
    q4 = out / str(quantized.location)  # relative to output/
    assert q4 == out / "gguf" / "support-bot-Q4_K_M.gguf" and q4.is_file()
    assert quantized.digest and quantized.digest.startswith("sha256:")
    assert not list((out / "gguf").glob(".*"))  # no partial or intermediate file left
    f16 = gguf.convert(tools, out / "merged", out / "gguf", "support-bot", "f16", timeout=600)
    assert q4.stat().st_size < f16.stat().st_size

    matched = 0
    for prompt in PROMPTS:
        ids = _ids(spm_model, prompt)
        expected = _hf_greedy(out / "merged", ids)
        assert _gguf_greedy(f16, ids) == expected, prompt
        matched += 1
        q4_tokens = _gguf_greedy(q4, ids)  # quantised: loads and generates, values may differ
        assert len(q4_tokens) == NEW_TOKENS and all(0 <= t < 512 for t in q4_tokens)
    assert matched == len(PROMPTS)


def test_missing_tools_are_a_sentence(tmp_path: Path) -> None:
    missing = "is missing \\(set FTO_LLAMA_CPP; an image built without llama.cpp"
    with pytest.raises(gguf.ToolError, match=missing):
        gguf.convert(gguf.Tools(tmp_path), tmp_path, tmp_path / "g", "j", "q4_k_m", timeout=60)


def test_commands() -> None:
    tools = gguf.Tools(Path("/opt/llama.cpp"))
    cmd = gguf.convert_command(tools, Path("/m"), Path("/o.gguf"), "f16")
    assert cmd[1:] == [
        "/opt/llama.cpp/convert/convert_hf_to_gguf.py",
        "/m",
        "--outfile",
        "/o.gguf",
        "--outtype",
        "f16",
    ]
    q = gguf.quantize_command(tools, Path("/a.gguf"), Path("/b.gguf"), "q4_k_m")
    assert q[:4] == ["/opt/llama.cpp/bin/llama-quantize", "/a.gguf", "/b.gguf", "Q4_K_M"]
    assert gguf.file_name("bot", "q8_0") == "bot-Q8_0.gguf"


def test_the_sentencepiece_tiny_tokenizer_agrees_with_sentencepiece(spm_model: Path) -> None:
    """``make-tiny-model --tokenizer sentencepiece``: transformers tokenizes as sentencepiece
    does (BOS first, newlines as bytes), which is what llama.cpp reads from tokenizer.model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(spm_model))
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, 512)
    assert (spm_model / "tokenizer.model").is_file()
    for prompt in [*PROMPTS, "### Instruction:\nAdd 2 and 3.\n\n### Response:\nred"]:
        assert tok(prompt)["input_ids"] == _ids(spm_model, prompt), prompt

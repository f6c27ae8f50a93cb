"""GGUF with llama.cpp's own tools: ``convert_hf_to_gguf.py`` (the converter, writing through the
``gguf`` package of the same llama.cpp commit) and ``llama-quantize`` (built from source by
hack/build-llama-cpp.sh; in the image at ``/opt/llama.cpp``).

f16, bf16 and q8_0 come straight from the converter; k-quants and the rest are a converter run to
f16 followed by ``llama-quantize``. The command builders are pure; ``convert`` runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer import files
from finetune_trainer.export.spec import CONVERTER_TYPES

DEFAULT_HOME = "/opt/llama.cpp"
HOME_ENV = "FTO_LLAMA_CPP"


class ToolError(RuntimeError):
    """A llama.cpp tool is missing, failed or ran past its limit; the message is a sentence."""


@dataclass(frozen=True)
class Tools:
    """Where hack/build-llama-cpp.sh put llama.cpp: ``bin/``, ``lib/``, ``convert/``."""

    home: Path

    @property
    def converter(self) -> Path:
        return self.home / "convert" / "convert_hf_to_gguf.py"

    @property
    def quantizer(self) -> Path:
        return self.home / "bin" / "llama-quantize"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Tools:
        env = os.environ if environ is None else environ
        return cls(Path(env.get(HOME_ENV) or DEFAULT_HOME))


def file_name(model_name: str, quantization: str) -> str:
    """``<name>-<QUANT>.gguf``, the naming llama.cpp and Ollama users expect."""
    return f"{model_name}-{quantization.upper()}.gguf"


def convert_command(tools: Tools, model_dir: Path, out: Path, outtype: str) -> list[str]:
    """The converter's command line (run with this interpreter: torch, numpy, transformers)."""
    return [
        sys.executable,
        str(tools.converter),
        str(model_dir),
        "--outfile",
        str(out),
        "--outtype",
        outtype,
    ]


def quantize_command(tools: Tools, src: Path, out: Path, quantization: str) -> list[str]:
    """``llama-quantize <f16.gguf> <out.gguf> <TYPE> <threads>``."""
    return [
        str(tools.quantizer),
        str(src),
        str(out),
        quantization.upper(),
        str(os.cpu_count() or 1),
    ]


def _run(cmd: list[str], what: str, timeout: int) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ToolError(f"{what} is not installed ({exc.filename})") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{what} ran longer than {timeout} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ToolError(f"{what} exited with {done.returncode}: {' | '.join(tail)[:400]}")


def convert(
    tools: Tools, merged_dir: Path, out_dir: Path, name: str, quantization: str, *, timeout: int
) -> Path:
    """Write ``out_dir/<name>-<QUANT>.gguf`` (a hidden ``.partial`` until complete)."""
    for path in (tools.converter, tools.quantizer):
        if not path.exists():
            raise ToolError(
                f"llama.cpp tool {path} is missing (set {HOME_ENV}; an image built without "
                "llama.cpp, as make demo builds it, cannot export GGUF)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / file_name(name, quantization)
    partial = files.staging_dir(final)
    if quantization in CONVERTER_TYPES:
        _run(convert_command(tools, merged_dir, partial, quantization), "the converter", timeout)
    else:
        f16 = out_dir / f".{name}-F16.gguf.tmp"
        try:
            _run(convert_command(tools, merged_dir, f16, "f16"), "the converter", timeout)
            _run(quantize_command(tools, f16, partial, quantization), "llama-quantize", timeout)
        finally:
            f16.unlink(missing_ok=True)
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, final)
    files.fsync_dir(out_dir)
    return final

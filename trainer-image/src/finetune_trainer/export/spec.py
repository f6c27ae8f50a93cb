"""The export contract: what to export (``ExportSpec``, in the trainer config) and what happened
(``ExportReport``, written as ``export.json`` next to the output and read by the operator)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

REPORT_VERSION: Literal[1] = 1
REPORT_FILE = "export.json"

# llama-quantize type names (llama.cpp's tools/quantize); f16/bf16/q8_0 are also what
# convert_hf_to_gguf.py writes directly (--outtype), so they need no quantizer run.
Quantization = Literal["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m"]
CONVERTER_TYPES: frozenset[str] = frozenset({"f16", "bf16", "q8_0"})
ExportKind = Literal["merged", "gguf", "oci"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GgufSpec(_Strict):
    """A GGUF file for llama.cpp / Ollama."""

    quantization: Quantization = Field(default="q4_k_m", description="llama.cpp type.")


class OciSpec(_Strict):
    """The adapter pushed as an OCI artifact (ORAS)."""

    repository: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+$",
        description="registry host[:port]/path, e.g. ghcr.io/acme/support-bot-adapter",
    )
    tag: str = Field(
        default="latest", pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$", description="Tag."
    )
    credentials_file: str | None = Field(
        default=None,
        description="A mounted .dockerconfigjson (Secret of type kubernetes.io/dockerconfigjson).",
    )
    plain_http: bool = Field(
        default=False,
        description="HTTP without TLS; accepted only for 127.0.0.1 or 198.18.0.0/15 (tests).",
    )

    @property
    def host(self) -> str:
        """The registry's host[:port]."""
        return self.repository.split("/", 1)[0]

    @property
    def reference(self) -> str:
        """host/path:tag"""
        return f"{self.repository}:{self.tag}"

    @model_validator(mode="after")
    def _plain_http_local_only(self) -> OciSpec:
        if self.plain_http and not plain_http_allowed(self.host):
            raise ValueError(
                f"oci.plainHttp is only allowed for 127.0.0.1 or 198.18.0.0/15, not {self.host}"
            )
        return self


def plain_http_allowed(host: str) -> bool:
    """Plain HTTP only to a loopback or test-net (198.18.0.0/15) address, never a name."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    return addr.is_loopback or addr in ipaddress.ip_network("198.18.0.0/15")


class ExportSpec(_Strict):
    """What ``finetune-trainer export`` produces from the trained adapter."""

    merged: bool = Field(default=False, description="Merged 16-bit safetensors.")
    dtype: Literal["bfloat16", "float16"] = Field(
        default="bfloat16", description="dtype of the merged weights."
    )
    gguf: GgufSpec | None = Field(default=None, description="A GGUF file (implies the merge).")
    oci: OciSpec | None = Field(default=None, description="Push the adapter as an OCI artifact.")
    timeout_seconds: int = Field(
        default=3600, ge=60, description="Limit of each external tool run."
    )


class ExportResult(_Strict):
    """One export's outcome; ``error`` is a sentence when ``ok`` is false."""

    kind: ExportKind
    ok: bool
    location: str | None = Field(
        default=None, description="Path relative to the output directory, or host/repo:tag."
    )
    digest: str | None = Field(default=None, description="sha256:… of the file or manifest.")
    size_bytes: int | None = Field(default=None, ge=0)
    error: str | None = None


class ExportReport(_Strict):
    """``export.json``: every requested export, in the order they ran."""

    version: Literal[1] = REPORT_VERSION
    results: list[ExportResult] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every export succeeded."""
        return all(r.ok for r in self.results)

    def failure_message(self) -> str | None:
        """``ExportFailed``'s sentence: which exports failed and why, the adapter kept."""
        failed = [f"{r.kind}: {r.error}" for r in self.results if not r.ok]
        if not failed:
            return None
        return "export failed (" + "; ".join(failed) + "); the trained adapter is kept"

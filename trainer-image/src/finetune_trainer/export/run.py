"""``finetune-trainer export``: every export the config asks for, each independent.

The adapter in ``<work>/output/adapter`` is only read. The merged model goes to
``output/merged``, GGUF files to ``output/gguf/``, and the report to ``output/export.json``
(written atomically, also when an export failed); its locations of files are relative to
``output/`` (``merged``, ``gguf/<job>-Q8_0.gguf``): the operator alone knows where that
directory is on the claim. The same results, as one JSON line, are the
termination message (the operator reads them from the pod status, errors cut to fit its 4 KiB).
Exit 0 when all worked, else 9 (ExportFailed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.errors import ConfigError, ExportFailedError, write_termination_log
from finetune_trainer.export import gguf, oci
from finetune_trainer.export.spec import REPORT_FILE, ExportReport, ExportResult, ExportSpec

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _attempt(kind: Any, work: Callable[[], ExportResult]) -> ExportResult:
    """Run one export; any failure becomes a result with a sentence, never an exception."""
    try:
        return work()
    except (gguf.ToolError, oci.PushError, ConfigError) as exc:
        error = str(exc)
    except OSError as exc:
        error = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    except Exception as exc:  # a library failure (peft, transformers): named, not a crash
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    log.error("export %s failed: %s", kind, error)
    return ExportResult(kind=kind, ok=False, error=error)


def run_exports(
    spec: ExportSpec,
    *,
    adapter: Path,
    out: Path,
    base: str,
    job: str,
    hub_kwargs: dict[str, Any],
    tools: gguf.Tools,
) -> ExportReport:
    """Merged, then GGUF (from the merged model), then the OCI push of the adapter."""
    from finetune_trainer.export import merge

    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"no trained adapter at {adapter} (did training finish?)")
    results: list[ExportResult] = []
    merged_dir = out / "merged"

    def do_merge() -> ExportResult:
        merge.merge(base, adapter, merged_dir, spec.dtype, hub_kwargs)
        return ExportResult(
            kind="merged",
            ok=True,
            location=str(merged_dir.relative_to(out)),
            size_bytes=dir_size(merged_dir),
        )

    if spec.merged or spec.gguf is not None:
        results.append(_attempt("merged", do_merge))
    if spec.gguf is not None:
        quant = spec.gguf.quantization

        def do_gguf() -> ExportResult:
            if not results[-1].ok:
                raise ConfigError("GGUF needs the merged model, which failed")
            path = gguf.convert(
                tools, merged_dir, out / "gguf", job, quant, timeout=spec.timeout_seconds
            )
            return ExportResult(
                kind="gguf",
                ok=True,
                location=str(path.relative_to(out)),
                digest=sha256_file(path),
                size_bytes=path.stat().st_size,
            )

        results.append(_attempt("gguf", do_gguf))
    if spec.oci is not None:
        target = spec.oci

        def do_oci() -> ExportResult:
            pushed = oci.push(target, adapter, job, base)
            return ExportResult(
                kind="oci",
                ok=True,
                location=pushed.reference,
                digest=pushed.digest,
                size_bytes=pushed.size_bytes,
            )

        results.append(_attempt("oci", do_oci))
    return ExportReport(results=results)


def write_report(report: ExportReport, out: Path) -> Path:
    """``out/export.json``, atomically."""
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.model_dump(mode="json", by_alias=True), indent=1))
    os.replace(tmp, path)
    return path


def termination_line(report: ExportReport, error_chars: int = 600) -> str:
    """The report as one compact JSON line under Kubernetes' 4096-byte termination message."""
    results = [
        r.model_copy(update={"error": r.error[:error_chars]}) if r.error else r
        for r in report.results
    ]
    data = report.model_copy(update={"results": results}).model_dump(mode="json", by_alias=True)
    return json.dumps(data, separators=(",", ":"))


def main(config: TrainerConfig) -> int:
    """The ``export`` subcommand."""
    from finetune_trainer import backends, prepare

    spec = config.output.export
    if spec is None:
        log.info("nothing to export (output.export is not set)")
        return 0
    out = config.work / "output"
    hub_kwargs = backends.hub_kwargs(config, prepare.hub_token(config))
    report = run_exports(
        spec,
        adapter=out / "adapter",
        out=out,
        base=config.model.source,
        job=config.job.name,
        hub_kwargs=hub_kwargs,
        tools=gguf.Tools.from_env(),
    )
    write_report(report, out)
    write_termination_log(termination_line(report))
    message = report.failure_message()
    if message is not None:
        log.error("%s: %s", ExportFailedError.reason, message)
        return ExportFailedError.exit_code
    log.info("exports done: %s", ", ".join(f"{r.kind} {r.location}" for r in report.results))
    return 0

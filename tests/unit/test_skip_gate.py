"""tests/harness/skips.py: a skip outside the gpu tier fails the run unless FTO_ALLOW_SKIPS=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = """
import pytest

def test_runs():
    pass

def test_cannot_run():
    pytest.skip("helm could not be built")

@pytest.mark.gpu
def test_needs_gpu():
    pytest.skip("no CUDA GPU")
"""


def _run(tmp_path: Path, body: str, **env: str) -> tuple[int, str, str]:
    (tmp_path / "test_sample.py").write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = gpu: gpu\n")
    report = tmp_path / "skips.tsv"
    environ = {k: v for k, v in os.environ.items() if k != "FTO_ALLOW_SKIPS"}
    environ |= {"PYTHONPATH": f"{ROOT}{os.pathsep}{environ.get('PYTHONPATH', '')}"}
    environ |= {"FTO_SKIP_REPORT": str(report), **env}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.harness.skips", "-ra", "-q", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, report.read_text() if report.exists() else ""


def test_a_skip_outside_the_gpu_tier_fails_and_is_listed(tmp_path: Path) -> None:
    rc, out, report = _run(tmp_path, SKIPPING)
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    assert "skipped tests fail the run" in out
    assert "1\tFAILS\thelm could not be built" in report
    assert "1\tallowed (gpu tier)\tno CUDA GPU" in report


def test_the_opt_out_passes_and_says_so(tmp_path: Path) -> None:
    rc, out, report = _run(tmp_path, SKIPPING, FTO_ALLOW_SKIPS="1")
    assert rc == 0, out
    assert "accepted because FTO_ALLOW_SKIPS is set" in out
    assert "1\tallowed by FTO_ALLOW_SKIPS\thelm could not be built" in report


def test_gpu_skips_alone_pass(tmp_path: Path) -> None:
    body = "import pytest\n\n@pytest.mark.gpu\ndef test_gpu():\n    pytest.skip('no CUDA GPU')\n"
    rc, out, report = _run(tmp_path, body)
    assert rc == 0, out
    assert report == "1\tallowed (gpu tier)\tno CUDA GPU\n"


def test_a_module_skipped_at_collection_fails(tmp_path: Path) -> None:
    body = "import pytest\n\npytest.importorskip('no_such_module_fto')\n\ndef test_x():\n    pass\n"
    rc, out, report = _run(tmp_path, body)
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    assert "FAILS\tcould not import 'no_such_module_fto'" in report

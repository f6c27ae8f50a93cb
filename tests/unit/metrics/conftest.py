"""Fixtures of the metrics tests: a fresh ``OperatorMetrics`` and ``promtool`` from Debian."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from finetune_operator.metrics import OperatorMetrics

PROMTOOL_PACKAGE = "prometheus"  # Debian 12: /usr/bin/promtool


@pytest.fixture
def metrics() -> OperatorMetrics:
    return OperatorMetrics(version="1.2.3")


def _extracted(cache: Path) -> Path:
    return cache / "usr" / "bin" / "promtool"


@pytest.fixture(scope="session")
def promtool() -> str:
    """``promtool``: on PATH, else unpacked from Debian's ``prometheus`` package into the cache
    (``apt-get download`` + ``dpkg-deb -x``: no daemon is installed or started; the package lists
    are fetched first when a fresh machine has none)."""
    found = shutil.which("promtool")
    if found:
        return found
    home = os.environ.get("FTO_CACHE", str(Path.home() / ".cache" / "finetune-operator"))
    cache = Path(home) / "debian-prometheus"
    if _extracted(cache).is_file():
        return str(_extracted(cache))
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip(f"promtool missing and no apt-get to fetch Debian's {PROMTOOL_PACKAGE}")
    download = cache / "deb"
    download.mkdir(parents=True, exist_ok=True)
    get = ["apt-get", "download", PROMTOOL_PACKAGE]
    try:
        first = subprocess.run(get, cwd=download, check=False, capture_output=True, timeout=600)
        if first.returncode != 0:
            # A fresh machine may have no package lists yet: fetch them once (root only).
            if os.geteuid() == 0:
                subprocess.run(
                    ["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600
                )
            subprocess.run(get, cwd=download, check=True, capture_output=True, timeout=600)
        deb = next(download.glob(f"{PROMTOOL_PACKAGE}_*.deb"))
        subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(cache)], check=True, capture_output=True, timeout=600
        )
    except (subprocess.SubprocessError, StopIteration, OSError) as exc:
        pytest.skip(f"promtool missing; Debian's {PROMTOOL_PACKAGE} package not available: {exc}")
    shutil.rmtree(download, ignore_errors=True)
    return str(_extracted(cache))

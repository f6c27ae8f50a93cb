"""llama.cpp for the tests: the quantizer, libraries and converter hack/build-llama-cpp.sh builds
(cached per version; cold it compiles), and the llama-cpp-python binding from the same sdist,
pointed at those libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def llama_cpp_home() -> Path:
    """The build's directory (bin/, lib/, convert/); ``import llama_cpp`` works after this."""
    done = subprocess.run(
        [str(REPO_ROOT / "hack" / "build-llama-cpp.sh"), "--binding", sys.executable],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    home = Path(done.stdout.strip().splitlines()[-1])
    os.environ["LLAMA_CPP_LIB_PATH"] = str(home / "lib")  # read when llama_cpp is imported
    return home

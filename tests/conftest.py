"""Shared pytest setup: the Kubernetes harness fixtures (see tests/harness/__init__.py)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `tests.harness` must import however pytest was started
    sys.path.insert(0, _ROOT)

from tests.harness.fixtures import cluster, kube, kueue, kwok_nodes, namespace  # noqa: E402

__all__ = ["cluster", "kube", "kueue", "kwok_nodes", "namespace"]

# a skip outside the gpu tier fails the run unless FTO_ALLOW_SKIPS=1 (tests/harness/skips.py)
pytest_plugins = ["tests.harness.skips"]

"""The root .dockerignore (the operator image's context) keeps what operator/Dockerfile copies and
drops the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _regex(pattern: str) -> str:
    """``**/`` = any directories (or none), ``*`` = within one path element, ``?`` = one char."""
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return out


def _ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    matches everything below it."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    result = False
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = _regex(pattern)
        if any(re.fullmatch(regex, p) for p in prefixes):
            result = not keep
    return result


def _copied() -> list[str]:
    text = (ROOT / "operator/Dockerfile").read_text(encoding="utf-8")
    return [m.group(1).rstrip("/") for m in re.finditer(r"^COPY\s+(?:--\S+\s+)*(\S+)", text, re.M)]


def test_dockerfile_sources_are_in_the_context() -> None:
    sources = _copied()
    assert sources
    for src in sources:
        assert not _ignored(src), src
    assert not _ignored("build/operator-wheels/current/x.whl")


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        "tests/unit/x.py",
        "docs/index.md",
        "build/other/x",
        "bench/gpu/results/a.jsonl",
        "operator/src/finetune_operator/__pycache__/x.pyc",
        ".mypy_cache/x",
    ],
)
def test_excluded(path: str) -> None:
    assert _ignored(path)

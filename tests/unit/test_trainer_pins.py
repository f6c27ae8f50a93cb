"""Every runtime dependency the trainer package declares is in requirements/trainer.txt (what the
CPU image and the host venv install), and an exact pin there satisfies the declared range, so
an import such as download.py's urllib3 never rests on whatever another package pulled in."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import REPO_ROOT


def _requirements() -> dict[str, Requirement]:
    lines = (REPO_ROOT / "requirements" / "trainer.txt").read_text().splitlines()
    reqs = [Requirement(ln.split("#", 1)[0].strip()) for ln in lines if ln.split("#", 1)[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO_ROOT / "trainer-image" / "pyproject.toml").read_text())
    pinned = _requirements()
    for text in project["project"]["dependencies"]:
        declared = Requirement(text)
        name = canonicalize_name(declared.name)
        assert name in pinned, f"{declared.name} is not in requirements/trainer.txt"
        exact = [s.version for s in pinned[name].specifier if s.operator == "=="]
        for version in exact:
            assert declared.specifier.contains(version), (text, str(pinned[name]))
    assert [s.operator for s in pinned["urllib3"].specifier] == ["=="]

"""hubcache.py: the model is read from the read-only shared cache only when it holds the model's
snapshot at the requested revision; otherwise the job's own cache (downloads) is used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from finetune_trainer import hubcache
from finetune_trainer.config import TrainerConfig
from tests.trainer.conftest import base_config

COMMIT = "a" * 40


def _fill(shared: Path, repo: str = "org/m", ref: str = "main") -> Path:
    """A hub cache holding ``repo`` at ``ref`` (huggingface_hub's layout), made read-only."""
    root = shared / "hub" / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / ref).write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    for d in [shared, *shared.rglob("*")]:
        if d.is_dir():
            d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return snap


def _config(tmp_path: Path, shared: Path | None, **model: object) -> TrainerConfig:
    cfg = base_config(tmp_path / "work", tmp_path / "m", tmp_path / "d.jsonl")
    cfg["model"] = {"name": "org/m", **model}
    cfg["paths"]["shared_model_cache"] = str(shared) if shared else None
    return TrainerConfig.model_validate(cfg)


@pytest.mark.parametrize(
    ("model", "uses_shared"),
    [({}, True), ({"revision": "main"}, True), ({"revision": COMMIT}, True),
     ({"revision": "v2"}, False), ({"revision": "b" * 40}, False), ({"name": "org/other"}, False)],
    ids=["default-main", "main", "commit", "other-branch", "other-commit", "other-model"],
)  # fmt: skip
def test_shared_cache_is_used_only_when_it_has_the_snapshot(
    tmp_path: Path, model: dict[str, object], uses_shared: bool
) -> None:
    shared = tmp_path / "shared"
    _fill(shared)
    config = _config(tmp_path, shared, **model)
    own = str(tmp_path / "work" / "cache" / "hub")
    assert hubcache.for_model(config) == (str(shared / "hub") if uses_shared else own)
    # from the shared cache, pinned to the snapshot's commit: nothing to record in it
    revision = COMMIT if uses_shared else config.model.revision
    assert hubcache.hub_source(config) == (hubcache.for_model(config), revision)
    if os.geteuid() != 0:  # root ignores the mode; the point is that nothing was written
        assert not os.access(shared / "hub", os.W_OK)


def test_no_shared_cache_or_a_local_model_uses_the_own_cache(tmp_path: Path) -> None:
    own = str(tmp_path / "work" / "cache" / "hub")
    assert hubcache.for_model(_config(tmp_path, None)) == own
    shared = tmp_path / "shared"
    _fill(shared)
    dumped = _config(tmp_path, shared).model_dump()
    local = TrainerConfig.model_validate({**dumped, "model": {"path": "/models"}})
    assert hubcache.for_model(local) == own


def test_a_ref_that_is_not_a_commit_is_ignored(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    root = shared / "hub" / "models--org--m"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("../../../etc")
    assert hubcache.snapshot(shared / "hub", "org/m", None) is None


def test_the_tokenizer_and_config_load_from_the_shared_cache_without_writing_to_it(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real huggingface_hub / transformers loaders, no network: everything comes from the
    shared cache's snapshot and nothing in it changes (root ignores the read-only mode, so
    the tree is compared instead)."""
    import shutil

    from finetune_trainer import prepare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a network call would fail the test, not hang
    shared = tmp_path / "shared"
    snap = shared / "hub" / "models--org--m" / "snapshots" / COMMIT
    shutil.copytree(tiny_model, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(COMMIT)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in shared.rglob("*"))
    config = _config(tmp_path, shared)
    assert prepare.load_model_config(config)["model_type"] == "llama"
    assert prepare.load_tokenizer(config).pad_token is not None
    assert sorted((str(p), p.stat().st_mtime_ns) for p in shared.rglob("*")) == before
    assert not (tmp_path / "work" / "cache" / "hub").exists()  # nothing downloaded

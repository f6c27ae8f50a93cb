"""Which Hugging Face hub cache a job reads the model from.

A job's own cache (``paths.model_cache``/hub, an emptyDir) is writable. A shared cache claim
(``spec.cache.pvc``, ``paths.shared_model_cache``) is mounted read-only: one job must not be able
to poison what another loads, so the admin fills it (docs/security.md) and jobs only read it. The
shared cache is used when it holds a snapshot of the model at the requested revision; otherwise
the model is downloaded into the job's own cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune_trainer.config import TrainerConfig

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def own(config: TrainerConfig) -> str:
    """The job's writable hub cache."""
    return str(Path(config.paths.model_cache) / "hub")


def snapshot(cache: Path, repo_id: str, revision: str | None) -> Path | None:
    """The snapshot directory of ``repo_id`` at ``revision`` in the hub cache ``cache`` (the
    layout huggingface_hub writes: ``models--org--name/refs/<rev>`` holds the commit,
    ``snapshots/<commit>/`` its files); None when it is not there. Reads only."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        try:
            commit = (repo / "refs" / rev).read_text().strip()
        except OSError:
            return None
    # a ref naming another directory ("../x") is not a commit
    if not _COMMIT.match(commit):
        return None
    folder = repo / "snapshots" / commit
    return folder if (folder / "config.json").is_file() else None


def _shared_snapshot(config: TrainerConfig) -> tuple[Path, Path] | None:
    shared, name = config.paths.shared_model_cache, config.model.name
    if not (shared and name and config.model.path is None):
        return None
    cache = Path(shared) / "hub"
    found = snapshot(cache, name, config.model.revision)
    return (cache, found) if found is not None else None


def for_model(config: TrainerConfig) -> str:
    """The hub cache to load ``config.model`` from: the shared one when it has the model's
    snapshot, else the job's own."""
    found = _shared_snapshot(config)
    return str(found[0]) if found is not None else own(config)


def hub_source(config: TrainerConfig) -> tuple[str, str | None]:
    """(``cache_dir``, ``revision``) for huggingface_hub / ``from_pretrained``. From the shared
    cache the revision is its snapshot's commit: with a branch name and the hub reachable,
    huggingface_hub would try to record the branch's newer commit in the read-only cache."""
    found = _shared_snapshot(config)
    if found is None:
        return own(config), config.model.revision
    return str(found[0]), found[1].name

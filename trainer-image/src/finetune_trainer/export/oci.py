"""The adapter as an OCI artifact, pushed with ORAS (oras-py).

One layer per file of the adapter directory (title annotation = file name, so ``oras pull``
recreates the directory), a small JSON config naming the base model, and manifest annotations.
Credentials come only from a mounted ``.dockerconfigjson`` (a Secret of type
``kubernetes.io/dockerconfigjson``); plain HTTP only for loopback/test-net registries
(``OciSpec`` refuses anything else).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.export.spec import OciSpec

CONFIG_MEDIA_TYPE = "application/vnd.finetune-operator.adapter.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


class PushError(RuntimeError):
    """The registry refused or could not be reached; the message is a sentence."""


@dataclass(frozen=True)
class Pushed:
    reference: str
    digest: str
    size_bytes: int


def artifact_files(adapter: Path) -> list[Path]:
    """The regular files of the adapter directory, sorted (a stable manifest)."""
    return sorted(p for p in adapter.iterdir() if p.is_file() and not p.name.startswith("."))


def manifest_annotations(job: str, base_model: str) -> dict[str, str]:
    """Manifest annotations (OCI image-spec keys)."""
    return {
        "org.opencontainers.image.title": f"{job} LoRA adapter",
        "org.opencontainers.image.description": f"LoRA adapter for {base_model}",
        "dev.finetune.base-model": base_model,
    }


def push(spec: OciSpec, adapter: Path, job: str, base_model: str) -> Pushed:
    """Push ``adapter`` to ``spec.reference``; the manifest digest comes from the registry."""
    import oras.provider
    import requests

    layers = artifact_files(adapter)
    if not any(p.name.startswith("adapter_") for p in layers):
        raise PushError(f"{adapter} holds no adapter files")
    if spec.credentials_file is not None and not Path(spec.credentials_file).is_file():
        raise PushError(
            f"registry credentials {spec.credentials_file} are missing: does the Secret of "
            "spec.output.export.oci.credentialsSecretRef exist with key .dockerconfigjson?"
        )
    scheme = "http" if spec.plain_http else "https"
    try:  # a registry with htpasswd answers Basic, a hosted one a Bearer token service
        probe = requests.get(f"{scheme}://{spec.host}/v2/", timeout=30)
    except requests.RequestException as exc:
        raise PushError(f"registry {spec.host} could not be reached: {exc}") from exc
    challenge = probe.headers.get("Www-Authenticate", "")
    backend = "basic" if challenge.lower().startswith("basic") else "token"
    if backend == "basic" and spec.credentials_file is None:
        raise PushError(f"registry {spec.host} wants a login and no credentials Secret is set")
    client: Any = oras.provider.Registry(
        hostname=spec.host, insecure=spec.plain_http, auth_backend=backend
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"baseModel": base_model, "job": job}, sort_keys=True))
        try:
            response = client.push(
                target=spec.reference,
                files=[f"{p}:{LAYER_MEDIA_TYPE}" for p in layers],
                manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                manifest_annotations=manifest_annotations(job, base_model),
                config_path=spec.credentials_file,
                disable_path_validation=True,
                quiet=True,
            )
        except requests.RequestException as exc:
            raise PushError(f"registry {spec.host} could not be reached: {exc}") from exc
        except (ValueError, OSError) as exc:  # oras raises ValueError for a non-2xx answer
            raise PushError(f"push to {spec.reference} failed: {str(exc)[:300]}") from exc
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        raise PushError(f"registry {spec.host} did not return the manifest digest")
    size = sum(p.stat().st_size for p in layers)
    return Pushed(spec.reference, str(digest), size)

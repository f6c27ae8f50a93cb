"""A real OCI registry for the export tests: Debian's docker-registry (distribution, installed by
hack/setup-host.sh) with htpasswd auth over plain HTTP on a loopback or test-net address, and
ORAS to pull back what was pushed."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness.wait import wait_until

USER, PASSWORD = "pusher", "s3cret-for-tests"


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@contextmanager
def running_registry(workdir: Path, ip: str = "127.0.0.1") -> Iterator[str]:
    """host:port of a registry listening on ``ip`` (storage and log in ``workdir``), stopped
    after."""
    import bcrypt
    import requests

    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: run hack/setup-host.sh"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (workdir / "htpasswd").write_text(f"{USER}:{hashed}\n")
    host = f"{ip}:{free_port(ip)}"
    (workdir / "config.yml").write_text(
        json.dumps(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
                "http": {"addr": host},
                "auth": {"htpasswd": {"realm": "fto-test", "path": str(workdir / "htpasswd")}},
            }
        )
    )
    log = (workdir / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(workdir / "config.yml")], stdout=log, stderr=log)
    try:
        wait_until(
            lambda: requests.get(f"http://{host}/v2/", timeout=2).status_code == 401,
            timeout=30,
            message=lambda: f"registry on {host}: {(workdir / 'registry.log').read_text()[-500:]}",
        )
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def dockerconfigjson(registry: str, password: str = PASSWORD) -> str:
    """What a kubernetes.io/dockerconfigjson Secret's .dockerconfigjson key holds."""
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": auth}}})


def pull(registry: str, ref: str, creds: Path, out: Path) -> tuple[list[str], str]:
    """ORAS pull of ``ref`` into ``out``: (file names, the manifest's digest)."""
    import oras.provider

    client: Any = oras.provider.Registry(hostname=registry, insecure=True, auth_backend="basic")
    pulled = client.pull(target=ref, config_path=str(creds), outdir=str(out))
    container = client.get_container(ref)
    client.auth.load_configs(container, configs=[str(creds)])
    url = f"{client.prefix}://{container.manifest_url()}"
    head = client.do_request(
        url, "HEAD", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    return sorted(Path(p).name for p in pulled), str(head.headers["Docker-Content-Digest"])

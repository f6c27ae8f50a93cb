"""The plugin's calls go through kube.py: against a small local HTTP server playing the
apiserver (the client's real REST layer, kubeconfig loading and bearer token), and kube's
exceptions become the plugin's one-line messages."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import kube
from finetune_operator.cli.api import Api, CliError, NotFoundError, Target, _errors

JOBS = "/apis/finetune.dev/v1alpha1/namespaces/ml/finetunejobs"
# path?query -> (status, content type, body parts sent one by one)
Routes = dict[str, tuple[int, str, list[bytes]]]


def _event(kind: str, name: str, version: str) -> bytes:
    obj = {"kind": "FineTuneJob", "metadata": {"name": name, "resourceVersion": version}}
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


@pytest.fixture
def apiserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Routes, list[tuple[str, str]]]]:
    """(routes to answer, (path, Authorization header) of each request seen)."""
    routes: Routes = {}
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: a stream

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            status, ctype, parts = routes.get(
                self.path, (404, "application/json", [b'{"message": "nothing here"}'])
            )
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.end_headers()
            for part in parts:
                self.wfile.write(part)
                self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KUBECONFIG", "")
    monkeypatch.setattr(Path, "home", lambda: Path("/nonexistent"))
    routes["/__port"] = (200, "text/plain", [str(server.server_address[1]).encode()])
    yield routes, seen
    server.shutdown()
    server.server_close()


def _api(tmp_path: Path, port: int) -> Api:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "x",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(doc))
    return Api(Target(kubeconfig=str(path), request_timeout=5.0))


def _port(routes: Routes) -> int:
    return int(routes["/__port"][2][0])


def test_calls_go_to_the_kubeconfigs_cluster_with_its_token(
    apiserver: tuple[Routes, list[tuple[str, str]]], tmp_path: Path
) -> None:
    routes, seen = apiserver
    job = {
        "metadata": {"name": "bot", "namespace": "ml", "creationTimestamp": "2026-12-01T05:00:00Z"}
    }
    routes[f"{JOBS}/bot"] = (200, "application/json", [json.dumps(job).encode()])
    api = _api(tmp_path, _port(routes))
    assert api.namespace == "ml"
    assert api.get_job("ml", "bot") == job  # the API's JSON as it came, "Z" timestamps kept
    assert seen == [(f"{JOBS}/bot", "Bearer secret-token")]


def test_a_missing_job_is_a_one_line_error(
    apiserver: tuple[Routes, list[tuple[str, str]]], tmp_path: Path
) -> None:
    routes, _ = apiserver
    api = _api(tmp_path, _port(routes))
    with pytest.raises(
        NotFoundError, match=r'^finetunejobs.finetune.dev "gone" in namespace "ml" not found$'
    ):
        api.get_job("ml", "gone")


def test_watch_events_split_across_reads_and_an_expired_version(
    apiserver: tuple[Routes, list[tuple[str, str]]], tmp_path: Path
) -> None:
    routes, _ = apiserver
    first, second = _event("ADDED", "a", "11"), _event("MODIFIED", "a", "12")
    gone = json.dumps(
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    ).encode()
    parts = [first[:7], first[7:] + second[:20], second[20:], gone + b"\n"]
    routes[f"{JOBS}?watch=true&timeoutSeconds=300&resourceVersion=10"] = (
        200,
        "application/json",
        parts,
    )
    api = _api(tmp_path, _port(routes))
    events = list(api.watch_jobs("ml", "10"))
    assert [
        (k, o["metadata"]["resourceVersion"] if k != "ERROR" else o["code"]) for k, o in events
    ] == [
        ("ADDED", "11"),
        ("MODIFIED", "12"),
        ("ERROR", 410),
    ]


def test_logs_read_and_followed(
    apiserver: tuple[Routes, list[tuple[str, str]]], tmp_path: Path
) -> None:
    routes, _ = apiserver
    base = "/api/v1/namespaces/ml/pods/bot-1/log"
    routes[f"{base}?container=trainer&tailLines=2"] = (200, "text/plain", [b"b\n", b"c\xff\n"])
    routes[f"{base}?follow=true"] = (200, "text/plain", [b"step 1\n", b"step 2\n"])
    api = _api(tmp_path, _port(routes))
    assert api.read_log("ml", "bot-1", "trainer", tail=2) == "b\nc\ufffd\n"
    assert b"".join(api.stream_log("ml", "bot-1")) == b"step 1\nstep 2\n"
    with pytest.raises(NotFoundError, match='logs of pod "bot-9" not found'):
        list(api.stream_log("ml", "bot-9"))


def test_an_unreachable_apiserver(tmp_path: Path) -> None:
    api = _api(tmp_path, 9)  # discard: nothing listens
    with pytest.raises(CliError, match=r'^listing pods of "bot": cannot reach the API server: '):
        api.list_pods("ml", "bot")


def test_an_unreadable_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("current-context: nowhere\n")
    with pytest.raises(CliError, match=r"^cannot load the cluster configuration: "):
        Api(Target(kubeconfig=str(tmp_path / "config")))


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (kube.RejectedError("PATCH x", 403, "forbidden"), 'pod "p": forbidden (HTTP 403)'),
        (kube.TransientError("GET x", 503, "etcd"), 'pod "p": etcd (HTTP 503)'),
        (
            kube.TransientError("GET x", None, "refused"),
            'pod "p": cannot reach the API server: refused',
        ),
        (kube.CommandError("exec", None, "failed: no such file"), 'pod "p" failed: no such file'),
        (kube.CommandError("exec", None, "ran past 60 s"), 'pod "p" ran past 60 s'),
    ],
)
def test_kube_errors_become_one_line_messages(raised: Exception, message: str) -> None:
    with pytest.raises(CliError) as caught, _errors('pod "p"'):
        raise raised
    assert str(caught.value) == message and caught.value.code == 1
    assert not isinstance(caught.value, NotFoundError)

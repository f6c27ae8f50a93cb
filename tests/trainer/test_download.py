"""Verified, bounded downloads (download.py) against a local HTTP server that misbehaves on purpose,
and what network exceptions mean (netfaults.py: classification, redaction)."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import download, netfaults
from finetune_trainer.errors import (
    DataError,
    DiskFullError,
    ModelNotFoundError,
    SourceUnavailableError,
    TrainerError,
)

BODY = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(BODY).hexdigest()
SECRET = "X-Amz-Signature=TOPSECRET123&X-Amz-Credential=CREDENTIAL456"

# Fast limits: no backoff sleeps, short timeouts; each test overrides what it probes.
FAST = download.Policy(
    deadline_s=10.0,
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    retries=3,
    backoff_factor=0.0,
    backoff_max_s=0.0,
    retry_after_max_s=1,
    max_redirects=3,
)


def policy(**kw: Any) -> download.Policy:
    return download.Policy(**{**FAST.__dict__, **kw})


# ------------------------------------------------------------------------- the misbehaving server


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]  # lower-case names
    at: float


@dataclass
class Server:
    """Answers each path from a script: a list of behaviours, one per request (the last one
    repeats). Behaviours: ("ok", body), ("ok-resumable", body) (ETag + Range support),
    ("cut", body, n) (Content-Length of the whole body, n bytes sent, connection closed),
    ("trickle", body, seconds) (one byte per interval), ("no-length", body),
    ("status", code, headers), ("redirect", location)."""

    url: str = ""
    scripts: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0
    default: tuple[Any, ...] = ("status", 404, {})  # for paths without a script

    def script(self, path: str, *steps: tuple[Any, ...]) -> str:
        self.scripts[path] = list(steps)
        return f"{self.url}{path}"

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


def _handler(state: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, data: bytes) -> None:
            self.wfile.write(data)
            state.sent += len(data)

        def do_HEAD(self) -> None:  # the hub client asks for metadata first
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            state.seen.append(
                Seen(path, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
            )
            steps = state.scripts.get(path) or [state.default]
            step = steps.pop(0) if len(steps) > 1 else steps[0]
            kind = step[0]
            if kind == "status":
                self.send_response(step[1])
                for k, v in step[2].items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "redirect":
                self.send_response(302)
                self.send_header("Location", step[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "ok-resumable":
                self._resumable(step[1])
            else:
                self._body(kind, step)

        def _resumable(self, body: bytes) -> None:
            rng = self.headers.get("Range")
            if rng and self.headers.get("If-Range") == '"v1"':
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                self._send(body[start:])
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self._send(body)

        def _body(self, kind: str, step: tuple[Any, ...]) -> None:
            body: bytes = step[1]
            self.send_response(200)
            if kind == "no-length":
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            if kind == "cut" and len(step) > 3:
                self.send_header("ETag", step[3])
            self.end_headers()
            if kind == "cut":
                self._send(body[: step[2]])
                self.close_connection = True
            elif kind == "trickle":
                for i in range(len(body)):
                    time.sleep(step[2])  # the misbehaviour under test, not synchronisation
                    try:
                        self._send(body[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return
            else:
                self._send(body)

    return Handler


class _Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a misbehaving answer is what some tests do


def _serve(state: Server, tls: Any = None) -> Iterator[Server]:
    httpd = _Quiet(("127.0.0.1", 0), _handler(state))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve(Server())


@pytest.fixture
def other() -> Iterator[Server]:
    """A second server: another origin (port) for redirects."""
    yield from _serve(Server())


def fetch(url: str, dest: Path, **kw: Any) -> Path:
    sha = kw.pop("sha256", None)
    return download.fetch(url, dest, sha256=sha, policy=policy(**kw))


def files(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


# ------------------------------------------------------------------------------------ success


def test_download_is_verified_recorded_and_reused(server: Server, tmp_path: Path) -> None:
    url = server.script("/train.jsonl", ("ok", BODY))
    path = fetch(url, tmp_path)
    assert path.read_bytes() == BODY and path.name.endswith("-train.jsonl")
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["size"] == len(BODY) and meta["sha256"] == SHA
    assert files(tmp_path) == sorted([path.name, path.name + ".json"])  # no .part left
    assert fetch(url, tmp_path) == path
    assert len(server.requests("/train.jsonl")) == 1  # the second call was served by the cache


def test_sha256_match_and_content_addressed_cache(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("ok", BODY))
    path = fetch(f"{url}?sig=one", tmp_path, sha256=SHA.upper())
    # a new presigned URL for the same file hits the cache: the name is the expected hash's
    assert fetch(f"{url}?sig=two", tmp_path, sha256=SHA) == path
    assert len(server.requests("/d.jsonl")) == 1


def test_sha256_mismatch_is_bad_data_naming_both(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("ok", BODY))
    wrong = "0" * 64
    with pytest.raises(DataError) as info:
        fetch(url, tmp_path, sha256=wrong)
    assert f"expected {wrong}, got {SHA}" in str(info.value)
    assert files(tmp_path) == []  # nothing cached, nothing to resume
    assert len(server.requests("/d.jsonl")) == 1  # not retried


# ---------------------------------------------------------------------------- cut and resumed


def test_truncated_body_is_never_accepted_or_cached(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 5000))
    with pytest.raises(SourceUnavailableError, match=f"5000 of {len(BODY)} bytes"):
        fetch(url, tmp_path, retries=2)
    assert len(server.requests("/d.jsonl")) == 3  # retried by the budget, then given up
    assert not [n for n in files(tmp_path) if not n.endswith(".part")]  # nothing cached


def test_cut_transfer_resumes_with_range(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 40_000, '"v1"'), ("ok-resumable", BODY))
    path = fetch(url, tmp_path)
    assert path.read_bytes() == BODY
    first, second = server.requests("/d.jsonl")
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=40000-" and second.headers["if-range"] == '"v1"'
    assert server.sent == len(BODY)  # nothing was sent twice


def test_a_later_pod_resumes_the_partial_file(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 60_000, '"v1"'), ("ok-resumable", BODY))
    with pytest.raises(SourceUnavailableError):
        fetch(url, tmp_path, retries=0)  # this pod gives up after the cut
    assert any(n.endswith(".part") for n in files(tmp_path))
    path = fetch(url, tmp_path)  # the next attempt (a new process) continues at 60,000
    assert path.read_bytes() == BODY
    assert server.requests("/d.jsonl")[1].headers["range"] == "bytes=60000-"
    assert server.sent == len(BODY)


def test_with_sha256_a_new_presigned_url_resumes_too(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 30_000, '"v1"'), ("ok-resumable", BODY))
    with pytest.raises(SourceUnavailableError):
        fetch(f"{url}?sig=old", tmp_path, sha256=SHA, retries=0)
    assert fetch(f"{url}?sig=new", tmp_path, sha256=SHA).read_bytes() == BODY
    assert server.requests("/d.jsonl")[1].headers["range"] == "bytes=30000-"


def test_a_partial_file_without_validator_restarts_from_zero(
    server: Server, tmp_path: Path
) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 1000), ("ok", BODY))
    assert fetch(url, tmp_path).read_bytes() == BODY
    assert "range" not in server.requests("/d.jsonl")[1].headers  # nothing proves it's the same


def test_cached_file_that_fails_verification_is_fetched_again(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.script("/d.jsonl", ("ok", BODY))
    path = fetch(url, tmp_path)
    path.write_bytes(BODY[:-1] + b"x")  # same size, different bytes: bit rot, a tampered file
    with caplog.at_level(logging.WARNING):
        assert fetch(url, tmp_path).read_bytes() == BODY
    assert "does not verify" in caplog.text
    path.with_name(path.name + ".json").unlink()  # a file from before verification existed
    assert fetch(url, tmp_path).read_bytes() == BODY
    assert len(server.requests("/d.jsonl")) == 3


# ----------------------------------------------------------------------------- bounded in time


def test_trickling_server_fails_within_the_deadline(server: Server, tmp_path: Path) -> None:
    url = server.script("/slow.jsonl", ("trickle", BODY[:5000], 0.01))
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"deadline of 0\.5 s"):
        fetch(url, tmp_path, deadline_s=0.5, read_timeout_s=5.0)
    assert time.monotonic() - started < 1.5  # the per-read timeout (5 s) never fired
    assert files(tmp_path) == [] or all(n.endswith(".part") for n in files(tmp_path))


def test_silent_server_is_cut_at_the_deadline_not_the_read_timeout(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts connections (the kernel does) and never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/d.jsonl"
        started = time.monotonic()
        with pytest.raises(SourceUnavailableError):
            fetch(url, tmp_path, deadline_s=0.4, read_timeout_s=30.0, retries=1)
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()


# --------------------------------------------------------------------------- transient answers


def test_429_honours_retry_after_then_succeeds(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("status", 429, {"Retry-After": "1"}), ("ok", BODY))
    assert fetch(url, tmp_path).read_bytes() == BODY
    first, second = server.requests("/d.jsonl")
    assert second.at - first.at >= 0.9  # waited as told, not at once


def test_503_twice_then_200(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("status", 503, {}), ("status", 503, {}), ("ok", BODY))
    assert fetch(url, tmp_path).read_bytes() == BODY
    assert len(server.requests("/d.jsonl")) == 3


def test_persistent_5xx_is_source_unavailable(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("status", 502, {}))
    with pytest.raises(SourceUnavailableError, match=r"HTTP 502 .*after 3 attempts"):
        fetch(url, tmp_path, retries=2)
    assert len(server.requests("/d.jsonl")) == 3


def test_connection_refused_is_retried_then_source_unavailable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(SourceUnavailableError, match="after 3 attempts") as info:
        fetch(f"http://127.0.0.1:{port}/d.jsonl?{SECRET}", tmp_path, retries=2)
    assert "TOPSECRET" not in str(info.value) and "CREDENTIAL" not in str(info.value)


# --------------------------------------------------------------------------- permanent answers


@pytest.mark.parametrize(
    ("status", "needle"),
    [(404, "HTTP 404"), (410, "HTTP 410"), (403, "hubTokenSecretRef"), (401, "presigned URL")],
)
def test_permanent_answers_are_bad_data_at_once(
    server: Server, tmp_path: Path, status: int, needle: str
) -> None:
    url = server.script("/d.jsonl", ("status", status, {}))
    with pytest.raises(DataError, match=needle):
        fetch(url, tmp_path)
    assert len(server.requests("/d.jsonl")) == 1


def test_oversized_by_content_length_is_refused_before_download(
    server: Server, tmp_path: Path
) -> None:
    url = server.script("/big.jsonl", ("ok", BODY))
    with pytest.raises(DataError, match=f"{len(BODY)} bytes is more than the limit of 1000"):
        fetch(url, tmp_path, max_bytes=1000)
    assert files(tmp_path) == [] and len(server.requests("/big.jsonl")) == 1


def test_oversized_without_content_length_is_cut_while_streaming(
    server: Server, tmp_path: Path
) -> None:
    url = server.script("/big.jsonl", ("no-length", BODY))
    with pytest.raises(DataError, match="more than the limit of 50000 bytes"):
        fetch(url, tmp_path, max_bytes=50_000)
    assert files(tmp_path) == []
    assert fetch(url, tmp_path).read_bytes() == BODY  # a close-delimited body within the cap


# -------------------------------------------------------------------------------- redirects


def test_redirect_to_another_origin_is_followed_without_credentials(
    server: Server, other: Server, tmp_path: Path
) -> None:
    target = other.script("/real.jsonl", ("ok", BODY))
    url = server.script("/d.jsonl", ("redirect", target))
    creds = url.replace("http://", "http://user:pa%40ss@")
    assert fetch(creds, tmp_path).read_bytes() == BODY
    assert server.requests("/d.jsonl")[0].headers["authorization"].startswith("Basic ")
    assert "authorization" not in other.requests("/real.jsonl")[0].headers


def test_redirect_loop_is_bad_data(server: Server, tmp_path: Path) -> None:
    server.script("/a", ("redirect", "/b"))
    url = server.script("/b", ("redirect", "/a"))
    with pytest.raises(DataError, match="more than 3 redirects"):
        fetch(url, tmp_path)
    assert len(server.seen) == 4


def test_redirect_to_another_scheme_is_refused(server: Server, tmp_path: Path) -> None:
    url = server.script("/d.jsonl", ("redirect", "file:///etc/passwd"))
    with pytest.raises(DataError, match="non-HTTP URL refused"):
        fetch(url, tmp_path)


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("https://a/x", "https://b/y", True),
        ("http://a/x", "https://a/x", True),  # an upgrade is fine
        ("http://a/x", "http://b/y", True),
        ("https://a/x?sig=s", "http://a/x?sig=s", False),  # never down to cleartext
        ("https://a/x", "ftp://a/x", False),
    ],
)
def test_redirect_policy(source: str, target: str, ok: bool) -> None:
    if ok:
        download.check_redirect(source, target, netfaults.redact(source))
        return
    with pytest.raises(DataError) as info:
        download.check_redirect(source, target, netfaults.redact(source))
    assert "sig=s" not in str(info.value)


# -------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h/d.jsonl", "https://h/d.jsonl"),
        (
            "https://h:8443/a/d.jsonl?X-Amz-Signature=abc#frag",
            "https://h:8443/a/d.jsonl?<redacted>",
        ),
        ("https://user:pw@h/d.jsonl", "https://h/d.jsonl"),
        ("http://tok@[::1]:80/x?t=1", "http://[::1]:80/x?<redacted>"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert netfaults.redact(url) == shown


def test_scrub_removes_tokens_from_library_messages() -> None:
    text = (
        "HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: "
        f"/d.jsonl?{SECRET} (Caused by ...) see https://u:p@h/x?t=2"
    )
    scrubbed = netfaults.scrub(text)
    assert "TOPSECRET" not in scrubbed and "u:p@" not in scrubbed and "t=2" not in scrubbed
    assert "/d.jsonl?<redacted>" in scrubbed
    question = "Is the repository id right? Check it (really?)."
    assert netfaults.scrub(question) == question


def test_presigned_token_never_in_messages_or_logs(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.script("/d.jsonl", ("cut", BODY, 10), ("status", 403, {}))
    presigned = url.replace("http://", "http://key:secretpw@") + f"?{SECRET}"
    with caplog.at_level(logging.DEBUG), pytest.raises(DataError) as info:
        fetch(presigned, tmp_path)
    shown = str(info.value) + caplog.text
    for secret in ("TOPSECRET", "CREDENTIAL", "secretpw"):
        assert secret not in shown
    assert "/d.jsonl?<redacted>" in str(info.value)


# ----------------------------------------------------------------------------- disk full


def test_enospc_while_writing_is_disk_full(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.script("/d.jsonl", ("ok", BODY))
    real_open = Path.open

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *a: Any) -> None:
            self.f.close()

        def write(self, _: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(self: Path, mode: str = "r", *a: Any, **kw: Any) -> Any:
        f = real_open(self, mode, *a, **kw)
        return Full(f) if self.name.endswith(".part") and "b" in mode else f

    monkeypatch.setattr(Path, "open", fake_open)
    with pytest.raises(DiskFullError, match=f"{len(BODY)} bytes needed"):
        fetch(url, tmp_path)


# ------------------------------------------------------------------ hub exception classification


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def _hub_http(cls_name: str, status: int) -> BaseException:
    import httpx
    from huggingface_hub import errors

    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x"))
    cls: Any = getattr(errors, cls_name)
    return cls(
        f"{status} Client Error for url https://huggingface.co/x?token=SECRETQ", response=response
    )


def _classification_cases() -> list[tuple[str, BaseException, type[TrainerError] | None]]:
    import httpx
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    return [
        ("refused", ConnectionRefusedError(111, "Connection refused"), SourceUnavailableError),
        ("reset", ConnectionResetError(104, "reset"), SourceUnavailableError),
        ("dns", socket.gaierror(-2, "Name or service not known"), SourceUnavailableError),
        ("timeout", TimeoutError("timed out"), SourceUnavailableError),
        ("httpx-connect", httpx.ConnectError("[Errno 111]"), SourceUnavailableError),
        ("httpx-read-timeout", httpx.ReadTimeout("read"), SourceUnavailableError),
        ("requests", requests.ConnectionError("Max retries"), SourceUnavailableError),
        (
            "transformers-no-network",
            _chained(offline, LocalEntryNotFoundError("hub unreachable")),
            SourceUnavailableError,
        ),
        (
            "datasets-no-network",
            _chained(ConnectionError("Couldn't reach 'org/d' on the Hub"), httpx.ConnectError("x")),
            SourceUnavailableError,
        ),
        ("hub-503", _hub_http("HfHubHTTPError", 503), SourceUnavailableError),
        ("hub-429", _hub_http("HfHubHTTPError", 429), SourceUnavailableError),
        ("hub-404",
         _chained(OSError("not a valid model id"), _hub_http("RepositoryNotFoundError", 404)),
         None),
        ("hub-gated", _hub_http("GatedRepoError", 401), None),
        (
            "hub-404-not-cached",  # huggingface_hub: LocalEntryNotFoundError from an HTTP 404
            _chained(
                OSError("We couldn't connect to 'https://huggingface.co' to load the files"),
                _chained(LocalEntryNotFoundError("x"), _hub_http("HfHubHTTPError", 404)),
            ),
            None,
        ),
        ("offline-mode", OfflineModeIsEnabled("HF_HUB_OFFLINE=1"), None),
        ("unknown-architecture", ValueError("model type foo"), None),
        ("missing-dir", FileNotFoundError(2, "No such file"), None),
        ("enospc", _chained(OSError("save failed"), OSError(errno.ENOSPC, "full")), DiskFullError),
    ]  # fmt: skip


def test_classify_exceptions() -> None:
    for name, exc, expected in _classification_cases():
        assert netfaults.classify(exc) is expected, name


def test_hub_failure_messages() -> None:
    gated = netfaults.hub_failure(_hub_http("GatedRepoError", 403), "cannot load model org/m")
    assert isinstance(gated, ModelNotFoundError)
    assert "hubTokenSecretRef" in str(gated) and "SECRETQ" not in str(gated)
    down = netfaults.hub_failure(httpx_connect_error(), "cannot load model org/m")
    assert isinstance(down, SourceUnavailableError) and "unreachable" in str(down)
    data = netfaults.hub_failure(
        FileNotFoundError("no such dataset"), "hub dataset org/d", DataError
    )
    assert isinstance(data, DataError) and str(data) == "hub dataset org/d: no such dataset"


def httpx_connect_error() -> BaseException:
    import httpx

    return httpx.ConnectError("[Errno -2] Name or service not known")


# ------------------------------------------------------- through the prepare stage, as in a pod


def test_prepare_with_a_refused_presigned_url_exits_3_without_the_token(
    server: Server,
    tmp_path: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The termination message (status.message, the Event), prepare-result.json and the
    progress object's prepare.json show the URL without its query string."""
    from finetune_trainer import main as cli
    from tests.trainer.conftest import base_config, progress_reports, write_config

    work = tmp_path / "work"
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("FTO_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("FTO_PROGRESS_FILE", str(work / "progress.local.json"))
    monkeypatch.setenv("FTO_SERVICEACCOUNT_DIR", str(tmp_path / "no-sa"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    url = server.script("/train.jsonl", ("status", 403, {})) + f"?{SECRET}"
    cfg = base_config(work, tiny_model, tmp_path / "unused", dataset={"path": None, "url": url})
    with caplog.at_level(logging.DEBUG):
        code = cli.main(["prepare", "--config", str(write_config(tmp_path / "c.json", cfg))])
    assert code == DataError.exit_code
    message = termination.read_text()
    assert message.startswith("BadData: cannot download http://127.0.0.1:")
    assert "/train.jsonl?<redacted>: HTTP 403" in message
    result = (work / "prepare-result.json").read_text()
    shown = [message, result, json.dumps(progress_reports(work)), caplog.text]
    for text in shown:
        assert "TOPSECRET" not in text and "CREDENTIAL" not in text


@pytest.mark.parametrize(("status", "needle"), [(401, "hubTokenSecretRef"), (404, "org/m")])
def test_hub_model_refused_or_missing_is_model_not_found(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, needle: str
) -> None:
    """The real transformers/huggingface_hub path against a local "hub" that answers 401 or 404:
    permanent (ModelNotFound), with the token hint for 401. (A refused connection gives
    SourceUnavailable through the same path after the hub client's own retries, ~50 s; its
    exception chain is in the classification table above.)"""
    from huggingface_hub import constants

    from finetune_trainer import prepare
    from finetune_trainer.config import parse_config

    server.default = ("status", status, {})
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # HF_ENDPOINT, read at import
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    config = parse_config({
        "version": 1, "job": {"name": "t"}, "model": {"name": "org/m"},
        "dataset": {"path": "/unused.jsonl"},
        "paths": {"work": str(tmp_path / "work"), "model_cache": str(tmp_path / "cache")},
    })  # fmt: skip
    with pytest.raises(ModelNotFoundError, match=needle) as info:
        prepare.load_tokenizer(config)
    assert str(info.value).startswith("cannot load the tokenizer of org/m")
    assert server.seen  # it did ask the (local) hub


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    import subprocess

    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Server]:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    yield from _serve(Server(), context)


def test_https_download_and_no_downgrade_to_http(
    tls_server: Server,
    other: Server,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test CA (as a pod may)
    url = tls_server.script("/d.jsonl", ("ok", BODY))
    assert fetch(url, tmp_path / "a").read_bytes() == BODY
    plain = other.script("/d.jsonl", ("ok", BODY))
    down = tls_server.script("/down.jsonl", ("redirect", plain + f"?{SECRET}"))
    with pytest.raises(DataError, match="redirect from https to http") as info:
        fetch(down, tmp_path / "b")
    assert other.seen == [] and "TOPSECRET" not in str(info.value)  # never asked over http


def test_untrusted_certificate_is_bad_data(tls_server: Server, tmp_path: Path) -> None:
    url = tls_server.script("/d.jsonl", ("ok", BODY))
    started = time.monotonic()
    with pytest.raises(DataError, match="TLS certificate verification failed"):
        fetch(url, tmp_path, backoff_factor=10.0, backoff_max_s=60.0)
    assert time.monotonic() - started < 5  # not retried with backoff: it will not start to verify

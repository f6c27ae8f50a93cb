"""Verified, bounded downloads: the one place the trainer fetches an HTTP(S) URL.

``fetch`` (urllib3 with its ``Retry``) downloads a dataset URL into the work volume:

- the body must match ``Content-Length`` (a short body is an error and is never cached), must not
  exceed ``max_bytes`` (checked against the header first, then while streaming), and must match the
  optional ``sha256``;
- the whole transfer, retries included, has one deadline; a trickling server fails within it
  (the socket timeout of every read is cut to the time left), not after a timeout per read;
- transient faults (DNS, connection refused/reset, timeouts, a cut body, 408/425/429/5xx, with
  ``Retry-After`` honoured up to a cap) are retried with urllib3's backoff while the retry budget
  and the deadline last, then raised as ``SourceUnavailableError`` (exit 7; the operator retries
  the attempt); permanent ones (401/403, 404/410, other 4xx, a checksum mismatch, too large, a
  refused redirect) are ``DataError`` (exit 3, BadData, not retried);
- a cut transfer resumes with ``Range``/``If-Range`` when the server gave a strong validator
  (ETag or Last-Modified), also across pods (the partial file and its validator stay on the volume);
- only verified complete files are cached: written to ``<name>.part``, fsynced, renamed; a sidecar
  ``<name>.json`` records size and sha256, and a cached file is reused only if both still verify;
- redirects: at most ``max_redirects`` hops, to http(s) only, never from https to http; the
  ``Authorization`` built from a URL's userinfo is not sent to another origin;
- every message, log line and exception text shows URLs through ``netfaults.redact`` (no query
  string, no userinfo): presigned tokens never reach logs, the termination message, status or
  Events.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from urllib3.exceptions import (
    LocationValueError,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import Retry, Timeout, make_headers, parse_url

from finetune_trainer.errors import DataError, DiskFullError, SourceUnavailableError, TrainerError
from finetune_trainer.netfaults import (
    TRANSIENT_STATUS,
    is_transient_status,
    redact,
    scrub,
    scrub_library_logs,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**30  # the trainer's own cap when the config gives none (10 GiB)
CHUNK = 1 << 20
USER_AGENT = "finetune-trainer"
TOKEN_HINT = (
    "the server refused access: a presigned URL may have expired or lack a permission; the URL "
    "must be readable without credentials (spec.hubTokenSecretRef is sent to the Hugging Face "
    "hub only, never to a dataset URL): for private data use a PVC, a ConfigMap, or a hub "
    "dataset with spec.hubTokenSecretRef"
)


# ------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """Limits of one download. Defaults suit a pod; tests shrink the times."""

    max_bytes: int = DEFAULT_MAX_BYTES
    deadline_s: float = 6 * 3600.0  # the whole transfer, retries and backoff included
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 120.0  # silence on an open connection
    retries: int = 8  # transient failures, all kinds together
    backoff_factor: float = 2.0  # urllib3: factor * 2**(n-1) seconds, capped
    backoff_max_s: float = 120.0
    retry_after_max_s: int = 600  # a server's Retry-After is honoured up to this
    max_redirects: int = 5
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def retry(self) -> Retry:
        return Retry(
            total=self.retries,
            # TLS and proxy failures ("other") are not retried here: a certificate that does not
            # verify will not start to; anything else of the kind is left to the operator's retry
            other=0,
            redirect=False,  # we follow redirects ourselves (policy checks per hop)
            status_forcelist=TRANSIENT_STATUS,
            allowed_methods=frozenset({"GET"}),
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max_s,
            retry_after_max=self.retry_after_max_s,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last transient answer comes back; we classify it
            raise_on_redirect=False,
        )


# ------------------------------------------------------------------------------------ caching


def cache_name(url: str, sha256: str | None) -> str:
    """The cached file's name: content-addressed when a sha256 is given (a rotated presigned
    token still hits the cache), else keyed by the whole URL. The URL's file name (and so its
    suffix, which selects the reader) is kept."""
    raw = Path(urllib.parse.urlsplit(url).path).name or "data"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", raw)[-100:].lstrip(".") or "data"
    key = f"sha256-{sha256[:16]}" if sha256 else hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{key}-{name}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(_meta_path(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    target = _meta_path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def cached(dest: Path, sha256: str | None) -> bool:
    """True when ``dest`` is a complete download that still verifies (size and sha256 recorded
    at download time, and the expected sha256 when given); else it is removed."""
    meta = _read_meta(dest)
    if not dest.exists() and meta is None:
        return False
    ok = (
        meta is not None
        and dest.is_file()
        and dest.stat().st_size == meta.get("size")
        and (sha256 is None or meta.get("sha256") == sha256)
        and file_sha256(dest) == meta.get("sha256")
    )
    if not ok:
        log.warning("cached download %s does not verify; fetching it again", dest.name)
        _remove(dest, _meta_path(dest))
    return ok


# ----------------------------------------------------------------------------------- transfer


class _RetryableError(Exception):
    """A fault after the response started (cut body, read timeout): resume or restart."""


class _CutBodyError(ProtocolError):
    """What a ``_RetryableError`` counts as in urllib3's ``Retry``: a read error."""


@dataclass
class _Transfer:
    """State of one ``fetch``: the retry budget spans every request it makes."""

    url: str
    dest: Path
    sha256: str | None
    policy: Policy
    deadline: float = 0.0
    retry: Retry = field(default_factory=Retry)
    pools: dict[str, urllib3.PoolManager] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")

    @property
    def resume_key(self) -> str:
        """What a partial file must belong to: the expected sha256 (a new presigned URL for the
        same file resumes too), else the whole URL."""
        return self.sha256 or hashlib.sha256(self.url.encode()).hexdigest()

    def left(self) -> float:
        return self.deadline - self.policy.clock()

    def unavailable(self, why: str) -> SourceUnavailableError:
        return SourceUnavailableError(f"cannot download {self.shown}: {why}")

    def too_slow(self, received: int, total: int | None) -> SourceUnavailableError:
        return self.unavailable(
            f"not finished within the deadline of {self.policy.deadline_s:g} s "
            f"({received} of {total if total is not None else '?'} bytes)"
        )

    def bad(self, why: str) -> DataError:
        return DataError(f"cannot download {self.shown}: {why}")

    # -- connections

    def pool(self, url: str) -> urllib3.PoolManager:
        """A pool per proxy (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` as urllib reads them)."""
        parts = urllib.parse.urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
            proxy = None
        key = proxy or ""
        if key not in self.pools:
            self.pools[key] = urllib3.ProxyManager(proxy) if proxy else urllib3.PoolManager()
        return self.pools[key]

    def timeout(self) -> Timeout:
        left = max(self.left(), 0.001)
        p = self.policy
        return Timeout(connect=min(p.connect_timeout_s, left), read=min(p.read_timeout_s, left))

    def bounded_retry(self) -> Retry:
        """The retry state, with waits inside urllib3 cut to the time left."""
        left = max(int(self.left()), 0)
        return self.retry.new(
            backoff_max=min(self.policy.backoff_max_s, left),
            retry_after_max=min(self.policy.retry_after_max_s, left),
        )

    def open(self, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """GET the URL, following redirects by the policy; status retries happen in urllib3."""
        current = self.url
        auth = _basic_auth(self.url)
        for _ in range(self.policy.max_redirects + 1):
            if self.left() <= 0:
                raise self.unavailable(
                    f"no answer within the deadline of {self.policy.deadline_s:g} s"
                )
            sent = dict(headers)
            if auth and _origin(current) == _origin(self.url):
                sent.update(auth)
            try:
                response = self.pool(current).urlopen(
                    "GET",
                    _without_userinfo(current),
                    headers=sent,
                    redirect=False,
                    retries=self.bounded_retry(),
                    timeout=self.timeout(),
                    preload_content=False,
                    decode_content=False,
                )
            except MaxRetryError as exc:
                raise self._connect_failure(exc.reason or exc) from None
            except LocationValueError as exc:
                raise self.bad(f"not a valid URL ({scrub(str(exc))})") from None
            if response.retries is not None:
                self.retry = response.retries
            location = response.get_redirect_location()
            if not location:
                return response
            response.drain_conn()
            response.release_conn()
            target = urllib.parse.urljoin(current, location)
            check_redirect(current, target, self.shown)
            log.info("download of %s redirected to %s", self.shown, redact(target))
            current = target
        raise self.bad(f"more than {self.policy.max_redirects} redirects")

    def _connect_failure(self, reason: Exception) -> TrainerError:
        text = scrub(str(reason))
        if isinstance(reason, SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in text:
                return self.bad(f"TLS certificate verification failed ({text})")
            return self.unavailable(f"TLS error ({text})")
        # MaxRetryError: the shared budget is spent, so every allowed attempt was made
        return self.unavailable(f"{text} (after {self.policy.retries + 1} attempts)")

    # -- one request

    def attempt(self) -> None:
        """One request: resume ``.part`` when possible, stream into it, or raise."""
        meta = _read_meta(self.part)
        offset = self.part.stat().st_size if self.part.exists() else 0
        validator = meta.get("validator") if meta and meta.get("key") == self.resume_key else None
        if offset and not validator:
            offset = 0  # nothing to prove the server's copy is the same: start over
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset and validator:
            headers.update({"Range": f"bytes={offset}-", "If-Range": str(validator)})
        response = self.open(headers)
        try:
            self._stream(response, offset, headers)
        except BaseException:
            response.close()  # never hand a connection with half a body back to the pool
            raise
        response.release_conn()

    def _stream(
        self, response: urllib3.BaseHTTPResponse, offset: int, headers: dict[str, str]
    ) -> None:
        status = response.status
        if status == 206 and "Range" in headers:
            total = _content_range_total(response, offset)
            if total is None:
                _remove(self.part, _meta_path(self.part))
                raise _RetryableError("the server answered a resume with a different range")
            mode = "ab"
        elif status == 200:
            if offset:
                log.info("download of %s restarts from 0 (the server did not resume)", self.shown)
            offset = 0
            total = _int(response.headers.get("Content-Length"))
            mode = "wb"
        elif status == 416 and offset:
            _remove(self.part, _meta_path(self.part))
            raise _RetryableError("the partial download no longer matches the server's file")
        else:
            raise self._status_failure(response)
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise self.bad(f"the server sent Content-Encoding {encoding} (identity was asked)")
        cap = self.policy.max_bytes
        if total is not None and total > cap:
            raise self.bad(f"{total} bytes is more than the limit of {cap} bytes (maxBytes)")
        if mode == "wb":
            _remove(self.part, _meta_path(self.part))
            validator = _validator(response)
            if validator:  # what a later resume (also by another pod) must match
                _write_meta(self.part, {"key": self.resume_key, "validator": validator})
        received = offset
        try:
            with self.part.open(mode) as out:
                while True:
                    left = self.left()
                    if left <= 0:
                        raise self.too_slow(received, total)
                    _set_read_timeout(response, min(self.policy.read_timeout_s, left))
                    try:
                        chunk = response.read1(CHUNK)
                    except (ProtocolError, ReadTimeoutError, SSLError, OSError) as exc:
                        if self.left() <= 0:
                            raise self.too_slow(received, total) from None
                        raise _RetryableError(
                            f"transfer cut after {received} of {total} bytes ({scrub(str(exc))})",
                        ) from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > cap:
                        raise self.bad(f"more than the limit of {cap} bytes (maxBytes)")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                need = f"; {total} bytes needed" if total is not None else ""
                raise DiskFullError(
                    f"no space left writing {self.part} for {self.shown}{need}"
                ) from None
            raise
        if total is not None and received != total:
            raise _RetryableError(f"the body ended after {received} of {total} bytes")

    def _status_failure(self, response: urllib3.BaseHTTPResponse) -> TrainerError:
        status = response.status
        text = f"HTTP {status} {response.reason or ''}".strip()
        if is_transient_status(status):
            attempts = len(self.retry.history) + 1
            return self.unavailable(f"{text} (after {attempts} attempts)")
        if status in (401, 403):
            return self.bad(f"{text}; {TOKEN_HINT}")
        if status in (404, 410):
            return self.bad(f"{text}: no such file at this URL")
        return self.bad(text)

    def finish(self) -> str:
        """Verify the complete ``.part``, record it, move it into place; return its sha256."""
        digest = file_sha256(self.part)
        if self.sha256 is not None and digest != self.sha256:
            _remove(self.part, _meta_path(self.part))
            raise self.bad(f"sha256 mismatch: expected {self.sha256}, got {digest}")
        size = self.part.stat().st_size
        _write_meta(self.dest, {"size": size, "sha256": digest, "url": self.shown})
        os.replace(self.part, self.dest)
        _remove(_meta_path(self.part))
        _fsync_dir(self.dest.parent)
        return digest


def fetch(
    url: str, dest_dir: Path, *, sha256: str | None = None, policy: Policy | None = None
) -> Path:
    """Download ``url`` into ``dest_dir`` once, verified; return the local file."""
    policy = policy or Policy()
    scrub_library_logs()
    expected = sha256.lower() if sha256 else None
    dest = dest_dir / cache_name(url, expected)
    if cached(dest, expected):
        log.info("dataset already downloaded and verified: %s", dest)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    t = _Transfer(url, dest, expected, policy, retry=policy.retry())
    t.deadline = policy.clock() + policy.deadline_s
    try:
        while True:
            try:
                t.attempt()
                break
            except _RetryableError as exc:
                _next_try(t, exc)
        digest = t.finish()
    except (DataError, DiskFullError):
        _remove(t.part, _meta_path(t.part))  # permanent: nothing worth resuming
        raise
    finally:
        for pool in t.pools.values():
            pool.clear()
    size = dest.stat().st_size
    log.info("downloaded %s (%d bytes, sha256 %s)", t.shown, size, digest)
    return dest


def _next_try(t: _Transfer, exc: _RetryableError) -> None:
    """Count a cut transfer against the retry budget (urllib3's ``Retry``) and back off, or
    raise ``SourceUnavailableError`` when the budget or the deadline is spent."""
    log.warning("download of %s: %s; retrying", t.shown, exc)
    try:
        t.retry = t.retry.increment("GET", t.shown, error=_CutBodyError(str(exc)))
    except MaxRetryError:
        raise t.unavailable(f"{exc} (after {len(t.retry.history) + 1} attempts)") from None
    if t.retry.get_backoff_time() >= t.left():
        raise t.unavailable(f"{exc}; no time left to retry within the deadline") from None
    t.retry.sleep()


# ------------------------------------------------------------------------------------ helpers


def check_redirect(source: str, target: str, shown: str) -> None:
    """The redirect policy: http(s) targets only, and never from https down to http."""
    src = urllib.parse.urlsplit(source).scheme.lower()
    dst = urllib.parse.urlsplit(target).scheme.lower()
    if dst not in ("http", "https"):
        raise DataError(f"cannot download {shown}: redirect to a non-HTTP URL refused")
    if src == "https" and dst == "http":
        raise DataError(
            f"cannot download {shown}: redirect from https to http ({redact(target)}) refused"
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    u = parse_url(url)
    return (u.scheme or "", (u.host or "").lower(), u.port)


def _basic_auth(url: str) -> dict[str, str]:
    auth = parse_url(url).auth
    return make_headers(basic_auth=urllib.parse.unquote(auth)) if auth else {}


def _without_userinfo(url: str) -> str:
    u = parse_url(url)
    return u._replace(auth=None).url if u.auth else url


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _validator(response: urllib3.BaseHTTPResponse) -> str | None:
    """A strong validator for If-Range: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _content_range_total(response: urllib3.BaseHTTPResponse, offset: int) -> int | None:
    """The full size from ``Content-Range: bytes <offset>-<end>/<total>``, if it resumes at
    ``offset``; else None."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        return None
    return int(match.group(3)) if match.group(3) != "*" else None


def _set_read_timeout(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    """Cut the socket timeout of the next read to ``seconds`` (the deadline's time left)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))

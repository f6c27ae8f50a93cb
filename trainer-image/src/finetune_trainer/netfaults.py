"""What a network exception means, and how a URL may be shown: pure, no I/O.

- ``redact(url)`` / ``scrub(text)``: a URL without userinfo and with its query string as
  ``?<redacted>``, so presigned tokens never reach logs, the termination message, status or
  Events; ``ScrubFilter`` does the same to the HTTP libraries' own log lines.
- ``classify(exc)``: the contract error a fetch failure stands for, whichever library raised it
  (urllib3 in download.py; huggingface_hub/httpx under transformers and datasets):
  ``SourceUnavailableError`` for a transient network fault (exit 7, retried by the operator),
  ``DiskFullError`` for ENOSPC, ``None`` for a permanent one.
- ``hub_failure(exc, what, permanent)``: the error to raise where a hub model, tokenizer or
  dataset fails to load: the classification above, else ``permanent`` (ModelNotFound, or
  BadData for a dataset) with a hint about the token on 401/403 or a gated repository.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import urllib.parse
from collections.abc import Iterator

import urllib3

from finetune_trainer.errors import (
    DiskFullError,
    ModelNotFoundError,
    SourceUnavailableError,
    TrainerError,
)

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
HUB_TOKEN_HINT = (
    "access refused by the hub: for a private or gated repository set spec.hubTokenSecretRef to "
    "a Secret holding a token that has access (and accept the repository's terms on the hub)"
)


# ------------------------------------------------------------------------------------ redaction

_USERINFO = re.compile(r"(?<=//)[^/@\s'\"]+@")
_QUERY = re.compile(r"\?[^\s'\"<>)\]]+")


def redact(url: str) -> str:
    """``url`` without userinfo, query string or fragment: what may be shown anywhere."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return scrub(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    query = "?<redacted>" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def scrub(text: str) -> str:
    """Any text (an exception from a library) with query strings and userinfo removed."""
    return _QUERY.sub("?<redacted>", _USERINFO.sub("", text))


class ScrubFilter(logging.Filter):
    """Scrubs records of the HTTP libraries, whose DEBUG lines show request URLs verbatim."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


_LIBRARY_LOGGERS = (
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


def scrub_library_logs() -> None:
    """Install ``ScrubFilter`` on the urllib3 loggers (idempotent)."""
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ScrubFilter) for f in logger.filters):
            logger.addFilter(ScrubFilter())


# ------------------------------------------------------------------------------- classification


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts, outermost first (cycles cut)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
    return


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status of a hub/requests/httpx HTTP error, when it carries a response."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _network_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "could not talk to the server" in the libraries we use."""
    types: list[type[BaseException]] = [
        ConnectionError,  # refused, reset, aborted, broken pipe
        TimeoutError,
        socket.gaierror,  # DNS
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.TimeoutError,
        urllib3.exceptions.ProtocolError,
    ]
    try:
        import httpx

        types += [httpx.TransportError]
    except ImportError:  # pragma: no cover - httpx comes with huggingface_hub
        pass
    try:
        import requests

        types += [requests.ConnectionError, requests.Timeout]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _hub_offline_types() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(offline-mode errors: permanent, entry-not-cached errors: the hub was unreachable)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - the trainer image has huggingface_hub
        return (), ()
    if constants.HF_HUB_OFFLINE:  # deliberately offline: a missing file will not appear
        return (OfflineModeIsEnabled, LocalEntryNotFoundError), ()
    return (OfflineModeIsEnabled,), (LocalEntryNotFoundError,)


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUS or (status >= 500 and status not in (501, 505))


def classify(exc: BaseException) -> type[TrainerError] | None:
    """The contract error an exception from a fetch (ours, the hub's, transformers', datasets')
    stands for: ``SourceUnavailableError`` for a transient network fault, ``DiskFullError`` for
    ENOSPC, ``None`` for anything else (the caller's permanent error: not found, refused, bad).

    The whole cause chain is read, because the libraries wrap: transformers raises ``OSError``
    from the hub's ``LocalEntryNotFoundError``, which huggingface_hub raises both from an
    ``httpx.ConnectError`` (the hub is unreachable: transient) and from an HTTP 404 it could not
    name (permanent). So, in order: ENOSPC anywhere; else the first HTTP status found decides;
    else a network error (or "not cached and the hub was unreachable") anywhere is transient.
    """
    chain = list(_chain(exc))
    if any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in chain):
        return DiskFullError
    for e in chain:
        status = _status_of(e)
        if status is not None:
            return SourceUnavailableError if is_transient_status(status) else None
    offline, unreachable = _hub_offline_types()
    if offline and any(isinstance(e, offline) for e in chain):
        return None
    network = _network_types() + unreachable
    if any(isinstance(e, network) for e in chain):
        return SourceUnavailableError
    return None


def _denied(exc: BaseException) -> bool:
    for e in _chain(exc):
        if _status_of(e) in (401, 403) or type(e).__name__ == "GatedRepoError":
            return True
    return False


def hub_failure(
    exc: BaseException, what: str, permanent: type[TrainerError] = ModelNotFoundError
) -> TrainerError:
    """The error to raise for a failed hub/transformers/datasets load of ``what``.

    Transient network faults become ``SourceUnavailableError`` (the operator retries), ENOSPC
    ``DiskFullError``; anything else is ``permanent`` (ModelNotFound, or BadData for a dataset),
    with a hint about the token when the hub answered 401/403 or the repository is gated.
    """
    detail = scrub(str(exc).strip().replace("\n", " ")) or type(exc).__name__
    kind = classify(exc)
    if kind is SourceUnavailableError:
        return SourceUnavailableError(f"{what}: the hub is unreachable ({detail})")
    if kind is DiskFullError:
        return DiskFullError(f"{what}: no space left on the cache volume ({detail})")
    hint = f"; {HUB_TOKEN_HINT}" if _denied(exc) else ""
    return permanent(f"{what}: {detail}{hint}")

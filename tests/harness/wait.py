"""Polling with a deadline: the only way tests wait for the cluster (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.5,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Exceptions raised by the predicate count as "not yet" (the API may be briefly unavailable or
    the object not created yet); the last one is chained to the TimeoutError raised when
    ``timeout`` seconds pass. ``message`` (or a callable producing it, evaluated at the deadline
    so it can describe the current state) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except Exception as e:
            last_error = e
        else:
            if value:
                return value
            last_value = value
            last_error = None
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            detail = f"last error: {last_error!r}" if last_error else f"last value: {last_value!r}"
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {text} ({detail})"
            ) from last_error
        time.sleep(interval)

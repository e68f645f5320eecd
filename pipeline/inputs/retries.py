"""Transient failures (a reset connection, a timeout, an object store's 5xx) are retried with
backoff, never recorded as unreadable inputs; every other failure is for the caller to judge."""
from __future__ import annotations

import errno
import logging
import re
import time
from typing import Callable, TypeVar

_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
                               errno.EAGAIN, errno.EPIPE, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                               errno.EIO})
_TRANSIENT_TEXT = re.compile(r"\b(5\d\d|429)\b|timed? ?out|temporar|connection (reset|aborted|refused)"
                             r"|service unavailable|too many requests|broken pipe", re.IGNORECASE)
READ_ATTEMPTS = 5  # backoff 0.5, 1, 2, 4 s: rides out a short object-store hiccup
RETRY_BACKOFF_S = 0.5
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A failure worth trying again (connection reset, timeout, 5xx/429 from an object store, EIO),
    never a reason to record an input as unreadable."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    # Object-store clients wrap HTTP failures in their own types (BeamIOError, HttpError, ...).
    return bool(_TRANSIENT_TEXT.search(f"{type(exc).__name__}: {exc}"))


def retry_transient(work: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """`work()`, tried again with exponential backoff while it fails transiently; the last failure raises."""
    attempts = attempts or READ_ATTEMPTS
    for attempt in range(attempts):
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - only transient failures are retried; the rest re-raise
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            logging.getLogger(__name__).warning("featurize: %s failed (%s: %s); retry %d of %d",
                                                what, type(exc).__name__, exc, attempt + 1, attempts - 1)
            time.sleep(RETRY_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")

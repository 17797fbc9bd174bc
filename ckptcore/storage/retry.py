"""Retrying transient storage errors with exponential backoff.

Object stores fail now and then: a ``503 SlowDown``, a ``500 InternalError``,
a connection reset. Every request ckptcore makes to a remote store is
idempotent (whole-object PUTs, ranged GETs, HEADs, DELETEs, one multipart part
at a time), so :class:`~ckptcore.storage.cloud.CloudStorage` simply repeats it.
Errors that are not transient (missing key, denied access, bad request) are
raised at once.

The number of attempts comes from ``CheckpointOptions(max_retries=...)``
(default 5 retries after the first attempt).

Example:
    >>> from ckptcore.storage.retry import RetryPolicy, call_with_retry, is_transient
    >>> is_transient(ConnectionResetError()), is_transient(FileNotFoundError("k"))
    (True, False)
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionResetError("reset by peer")
    ...     return "ok"
    >>> call_with_retry(RetryPolicy(initial_delay=0), flaky), len(calls)
    ('ok', 3)
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["RetryPolicy", "is_transient", "call_with_retry", "TransientError", "DEFAULT_POLICY"]

T = TypeVar("T")

#: Exception class names (from botocore, aiohttp, urllib3, requests...) that mean "try again".
_TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "HTTPClientError", "IncompleteReadError", "ResponseStreamingError", "ProxyConnectionError",
    "ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError",
    "ClientOSError", "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError",
    "ProtocolError", "IncompleteRead", "RemoteDisconnected", "ChunkedEncodingError", "FSTimeoutError",
})
#: S3 / GCS error codes that mean "try again".
_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "RequestTimeTooSkewed", "BadDigest", "XAmzContentSHA256Mismatch",
})
_TRANSIENT_TEXT = ("internalerror", "serviceunavailable", "slowdown", "service unavailable", "internal server error",
                   "please reduce your request rate", "connection reset", "bad gateway", "gateway timeout",
                   "requesttimeout", "server disconnected")


class TransientError(OSError):
    """Raise (or subclass) this from a storage plugin to ask for a retry.

    Example:
        >>> from ckptcore.storage.retry import TransientError, is_transient
        >>> is_transient(TransientError("503 from my store"))
        True
    """

    transient = True


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        meta = resp.get("ResponseMetadata") or {}
        code = meta.get("HTTPStatusCode")
        if isinstance(code, int):
            return code
    for attr in ("status", "status_code", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and not isinstance(v, bool) and 100 <= v < 600:
            return v
    return None


def _one_is_transient(exc: BaseException) -> bool | None:
    """True/False when ``exc`` decides the question, None when its causes should."""
    flag = getattr(exc, "transient", None)
    if isinstance(flag, bool):
        return flag
    if type(exc).__module__.startswith("ckptcore."):
        return False  # already a ckptcore error: retried (or not) where it was raised
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return True
    if any(c.__name__ in _TRANSIENT_NAMES for c in type(exc).__mro__):
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = (resp.get("Error") or {}).get("Code")
        if code:
            return code in _TRANSIENT_CODES
    if isinstance(exc, OSError):
        text = str(exc).lower()
        if any(t in text for t in _TRANSIENT_TEXT):
            return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is worth retrying.

    Transient: connection resets and timeouts, HTTP 5xx/408/429, S3's
    ``SlowDown``/``InternalError``/``ServiceUnavailable``, and any exception
    with ``transient = True``. Not transient: missing objects, denied access,
    and everything else.

    Example:
        >>> from ckptcore.storage.retry import is_transient
        >>> is_transient(OSError(5, "We encountered an internal error (InternalError)")), is_transient(ValueError())
        (True, False)
    """
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        verdict = _one_is_transient(e)
        if verdict is not None:
            return verdict
        e = e.__cause__ or e.__context__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: delay ``initial_delay * multiplier**n``, capped, with jitter.

    Example:
        >>> from ckptcore.storage.retry import RetryPolicy
        >>> p = RetryPolicy(max_retries=3, initial_delay=0.1, jitter=0)
        >>> [p.delay(n) for n in range(3)]
        [0.1, 0.2, 0.4]
    """

    max_retries: int = 5
    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.initial_delay * self.multiplier ** attempt)
        if self.jitter:
            d *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, d)


DEFAULT_POLICY = RetryPolicy()


def call_with_retry(policy: RetryPolicy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient errors per ``policy``; re-raise the last error.

    Example:
        >>> from ckptcore.storage.retry import RetryPolicy, call_with_retry
        >>> call_with_retry(RetryPolicy(max_retries=0), lambda: 42)
        42
    """
    attempt = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if attempt >= policy.max_retries or not is_transient(e):
                raise
            time.sleep(policy.delay(attempt))
            attempt += 1


async def acall_with_retry(policy: RetryPolicy, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Async twin of :func:`call_with_retry` for coroutine functions.

    Example:
        >>> import asyncio
        >>> from ckptcore.storage.retry import RetryPolicy, acall_with_retry
        >>> async def f(): return 1
        >>> asyncio.run(acall_with_retry(RetryPolicy(), f))
        1
    """
    attempt = 0
    while True:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            if attempt >= policy.max_retries or not is_transient(e):
                raise
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1

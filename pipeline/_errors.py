"""Exceptions raised by llmpipe.

Resource state is reported with trio's own exceptions (``trio.ClosedResourceError``,
``trio.BrokenResourceError``, ``trio.BusyResourceError``, ``trio.EndOfChannel``). Everything
that is llmpipe's own derives from one base class::

    LLMPipeError
    ├── ConfigError            bad argument or option (also a ValueError)
    │   ├── CostLimitError       (pipeline.producers) over a CostGuard limit, nothing sent
    │   └── RequestError         (sinks.server) an invalid request field: HTTP 400
    ├── MissingExtraError      an optional dependency is not installed (also an ImportError)
    ├── ChannelOverflowError   a channel with policy "fail" was full
    ├── ConsumerGone           a sink's reader went away (closed tab, broken pipe)
    │   └── ClientGone           (sinks.server) the HTTP client went away
    ├── StageError             a stage refused the stream (validation, budget)
    ├── ProducerError          the upstream model failed
    │   ├── ProducerConnectionError
    │   ├── ProducerTimeout
    │   ├── ProducerStatusError   (HTTP status from the provider; has ``status_code``)
    │   └── ProducerProtocolError (the provider sent something we cannot parse)
    ├── StoreError             (pipeline.stores) StreamNotFound, StoreFull
    ├── ClientError            (pipeline.client) StreamStatusError, StreamConnectionError
    │                            (ReconnectsExhausted), StreamProtocolError
    └── Refused                (sinks.server) the server refuses a request: 401, 404, 413,
                                 415, 429, 503 (one table in sinks/server/_errors.py)

Each carries ``kind`` (a short machine-readable word used in :class:`pipeline.Error` events)
and ``retryable``. Foreign exceptions are translated at the boundary with
``raise ProducerError(...) from exc`` (the producers map each SDK's exception classes with a
table); :func:`error_event` is the one place where an exception becomes an ``Error`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import overload

import trio

from ._events import Error

__all__ = [
    "ChannelOverflowError",
    "ConfigError",
    "ConsumerGone",
    "LLMPipeError",
    "MissingExtraError",
    "ProducerConnectionError",
    "ProducerError",
    "ProducerProtocolError",
    "ProducerStatusError",
    "ProducerTimeout",
    "StageError",
    "error_event",
    "lone_exception",
]


class LLMPipeError(Exception):
    """Base class of every exception llmpipe defines."""

    kind: str = "internal"
    retryable: bool = False


class ConfigError(LLMPipeError, ValueError):
    """An argument, option or request field is invalid. The message names the field."""

    kind = "config"


class MissingExtraError(LLMPipeError, ImportError):
    """A feature needs an optional dependency that is not installed. The message is one line
    that names the extra to install (see :func:`pipeline.packaging.missing_extra`). Also an
    ``ImportError``, so ``except ImportError`` works."""

    kind = "missing_extra"


class ChannelOverflowError(LLMPipeError):
    """A channel whose overflow policy is ``fail`` had no room for an item."""

    kind = "overflow"


class ConsumerGone(LLMPipeError):
    """The reader behind a sink went away; the pipeline treats this as a normal end."""

    kind = "consumer_gone"


class StageError(LLMPipeError):
    """A stage aborted the stream (a validation rule failed, a budget was exceeded)."""

    kind = "stage"

    def __init__(self, message: str, *, kind: str = "stage") -> None:
        super().__init__(message)
        self.kind = kind


class ProducerError(LLMPipeError):
    """The upstream producer failed."""

    kind = "producer"

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ProducerConnectionError(ProducerError):
    """The connection to the provider failed or was reset."""

    kind = "connection"
    retryable = True


class ProducerTimeout(ProducerError):
    """No first token, or no event for too long (a stall)."""

    kind = "timeout"
    retryable = True


class ProducerStatusError(ProducerError):
    """The provider answered with an HTTP error status.

    ``retry_after`` is how long the provider asked us to wait (seconds, from its
    ``Retry-After`` header), or ``None``.
    """

    kind = "status"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        if retryable is None:
            # As the SDKs do: timeouts, conflicts, rate limits and server errors.
            retryable = status_code in (408, 409, 429) or status_code >= 500
        super().__init__(message, retryable=retryable)
        self.status_code = status_code
        self.retry_after = retry_after


class ProducerProtocolError(ProducerError):
    """The provider sent a stream we could not parse."""

    kind = "protocol"


def error_event(exc: BaseException) -> Error:
    """The :class:`Error` event that reports ``exc`` (secrets never come from here: messages
    of llmpipe's own errors are written to leave them out)."""
    if isinstance(exc, LLMPipeError):
        return Error(kind=exc.kind, message=str(exc), retryable=exc.retryable)
    return Error(kind="internal", message=f"{type(exc).__name__}: {exc}", retryable=False)


@overload
def lone_exception(exc: Exception) -> Exception: ...
@overload
def lone_exception(exc: BaseException) -> BaseException: ...
def lone_exception(exc: BaseException) -> BaseException:
    """The exception inside (nested) exception groups of one, else ``exc`` itself.

    What a task failing inside nested nurseries raises is such a group; callers that report a
    failure (an HTTP status, a CLI message, a sink's own error) look at the one inside."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextmanager
def lone_exception_unwrapped() -> Iterator[None]:
    """Raise an exception group of one (nested groups too) as the exception inside.

    For a context manager that owns a nursery: its caller gets the failure it can catch by
    type (``except ProducerError``), not a group. A group of several is raised as it is, except
    that ``trio.Cancelled`` does not count: a task failed while another was being cancelled
    (a read that failed as its stream was cancelled) raises the failure, and the cancellation,
    which trio keeps until its scope is left, comes back at the next checkpoint. Without this
    the group would go past every ``except`` by type, and the failure reach the cancelled
    scope's owner as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        # Nested groups of one: whatever is inside (a lone trio.Cancelled too); else the one
        # failure beside cancellations.
        one = len(group.exceptions) == 1
        lone = lone_exception(group) if one else _lone_failure(group)
        if lone is None:
            raise
        raise lone from lone.__cause__


def _lone_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group`` that is not ``trio.Cancelled`` (nested groups flattened),
    or ``None`` if there are several, or none."""
    found: BaseException | None = None
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop()
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            if found is not None:
                return None
            found = exc
    return found

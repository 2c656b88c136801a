"""Exceptions raised by llmpipe.

Resource state is reported with trio's own exceptions (``trio.ClosedResourceError``,
``trio.BrokenResourceError``, ``trio.BusyResourceError``, ``trio.EndOfChannel``). Everything
that is llmpipe's own derives from one base class::

    LLMPipeError
    ├── ConfigError            bad argument or option (also a ValueError)
    ├── ChannelOverflowError   a channel with policy "fail" was full
    ├── ConsumerGone           a sink's reader went away (closed tab, broken pipe)
    ├── StageError             a stage refused the stream (validation, budget)
    └── ProducerError          the upstream model failed
        ├── ProducerConnectionError
        ├── ProducerTimeout
        ├── ProducerStatusError   (HTTP status from the provider; has ``status_code``)
        └── ProducerProtocolError (the provider sent something we cannot parse)

Each carries ``kind`` (a short machine-readable word used in :class:`pipeline.Error` events)
and ``retryable``. Foreign exceptions are translated at the boundary with
``raise ProducerError(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "ChannelOverflowError",
    "ConfigError",
    "ConsumerGone",
    "LLMPipeError",
    "ProducerConnectionError",
    "ProducerError",
    "ProducerProtocolError",
    "ProducerStatusError",
    "ProducerTimeout",
    "StageError",
]


class LLMPipeError(Exception):
    """Base class of every exception llmpipe defines."""

    kind: str = "internal"
    retryable: bool = False


class ConfigError(LLMPipeError, ValueError):
    """An argument, option or request field is invalid. The message names the field."""

    kind = "config"


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
    """The provider answered with an HTTP error status."""

    kind = "status"

    def __init__(self, message: str, *, status_code: int, retryable: bool | None = None) -> None:
        if retryable is None:
            # As the SDKs do: timeouts, conflicts, rate limits and server errors.
            retryable = status_code in (408, 409, 429) or status_code >= 500
        super().__init__(message, retryable=retryable)
        self.status_code = status_code


class ProducerProtocolError(ProducerError):
    """The provider sent a stream we could not parse."""

    kind = "protocol"

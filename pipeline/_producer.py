"""The producer interface: the source of a pipeline's events.

A producer *pushes*: the runner calls :meth:`Producer.stream` in a task of its own and hands it
``emit``, which delivers one event into the pipeline and waits while the pipeline is full
(backpressure). There is no async generator to close, so cancellation is plain: when the
pipeline is cancelled (or every consumer has gone) the producer's task is cancelled inside
``emit`` or inside its own I/O, and its ``async with`` blocks (the SDK stream, the HTTP
response) close the upstream request on the way out.

Contract:

* Before the first event, a failure is an exception (preferably a :class:`ProducerError`
  with a clear message); the pipeline re-raises it to its owner.
* After the first event, a failure may be raised (the runner turns it into an
  :class:`~pipeline.Error` event that reaches every sink) or emitted as an ``Error`` event.
* A producer should end with a :class:`~pipeline.Done` event; if it returns without a terminal
  event the runner adds ``Done(stop_reason=None)``. Events emitted after a terminal one are
  ignored and the producer is cancelled.
* ``seq`` is stamped by the runner; producers leave it 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias, runtime_checkable

from ._events import Event

__all__ = ["Emit", "Producer"]

Emit: TypeAlias = Callable[[Event], Awaitable[None]]


@runtime_checkable
class Producer(Protocol):
    """Anything with an async ``stream(emit)`` method; see the module docstring."""

    async def stream(self, emit: Emit, /) -> None:
        """Produce the stream's events by awaiting ``emit(event)`` for each, in order."""
        ...

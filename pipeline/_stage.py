"""The stage interface.

A stage is a small synchronous state machine between the producer and the sinks. The runner
drives the whole chain of stages in **one task** (a trio channel hop costs a scheduler round
trip, ~10 µs, so a task per stage would cap throughput for nothing): each event from the producer
is fed to the first stage, whatever it returns to the next, and so on. Stages may merge or split
text but must never reorder: when a stage holding text receives any other event it releases the
text first (:class:`TextStage` does this for you).

Time: a stage that wants to act on a timer (a flush interval, a stall deadline) returns the
absolute ``trio.current_time()`` at which it wants :meth:`Stage.expire` called from
:meth:`Stage.deadline`; the runner wakes it then if no event came first. Stages read time only
from the ``now`` they are given, so they are deterministic under ``MockClock``.

Stages are not shared between pipelines: build new ones for each stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

from ._events import Event, TextDelta

__all__ = ["Stage", "StageContext", "StageStatistics", "TextStage"]


@attrs.frozen
class StageStatistics:
    """Items and bytes of text through one stage."""

    name: str
    items_in: int
    items_out: int
    text_bytes_in: int
    text_bytes_out: int


def _no_pressure() -> float:
    return 0.0


@attrs.frozen
class StageContext:
    """What the runner tells a stage about its surroundings.

    ``downstream_pressure()`` is how far behind the consumers are, 0.0 (keeping up) to 1.0
    (a buffer is full), taken over the sinks that do not block the producer (a ``block`` sink
    already slows the producer down, so it counts too). Adaptive stages use it to grow chunks.
    """

    downstream_pressure: Callable[[], float] = _no_pressure


class Stage:
    """Base class of stages. Override :meth:`feed`; the rest have working defaults."""

    name: str = "stage"

    def bind(self, context: StageContext) -> None:
        """Called once by the runner before the first event."""

    def feed(self, event: Event, now: float) -> Sequence[Event]:
        """Take one event; return the events to pass on, in order."""
        return (event,)

    def deadline(self) -> float:
        """Absolute time at which :meth:`expire` should run, or ``math.inf``."""
        return math.inf

    def expire(self, now: float) -> Sequence[Event]:
        """The deadline passed; return what to release."""
        return ()


class TextStage(Stage):
    """A stage that works on text and passes every other event through unchanged.

    Subclasses implement :meth:`feed_text` and :meth:`flush_text`. Before any non-text event
    passes, the held text is flushed, so order is kept.
    """

    def feed_text(self, text: str, now: float) -> list[str]:
        raise NotImplementedError

    def flush_text(self, now: float) -> list[str]:
        return []

    def feed(self, event: Event, now: float) -> Sequence[Event]:
        if isinstance(event, TextDelta):
            return [TextDelta(t) for t in self.feed_text(event.text, now)]
        out: list[Event] = [TextDelta(t) for t in self.flush_text(now)]
        out.append(event)
        return out

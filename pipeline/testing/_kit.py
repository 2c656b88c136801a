"""What you need to test your own stages, producers and sinks.

* :class:`ScriptedProducer` (re-exported): a script of events with delays, for ``MockClock``.
* :class:`CountingProducer`: an endless (or long) source of small text deltas that counts what
  it emitted and records when it was closed, for backpressure and cancellation tests.
* :class:`RecordingSink`: records every event it reads, optionally slowly, and checks that no
  two deliveries overlap.
* :func:`check_sink`: a conformance check every sink should pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio
import trio.testing

from .. import (
    ConsumerGone,
    Done,
    Emit,
    Error,
    Event,
    EventReceiver,
    Pipeline,
    Route,
    Sink,
    TextDelta,
)
from ..producers import ScriptedProducer, Step

__all__ = ["CountingProducer", "RecordingSink", "ScriptedProducer", "Step", "check_sink"]


@attrs.define(eq=False)
class CountingProducer:
    """Emits ``count`` text deltas (``math.inf``: forever) of ``text``, then ``Done``.

    ``emitted`` counts deltas handed to the pipeline (``emit`` returned), ``attempted`` counts
    calls to ``emit`` (one more while parked on a full channel). ``closed_at`` is set when the
    task ends for any reason; ``delay`` sleeps between deltas. With ``sync_burst`` the producer
    never awaits anything but ``emit`` (a source that never yields by itself).
    """

    count: float = math.inf
    text: str = "x"
    delay: float = 0.0
    emitted: int = 0
    attempted: int = 0
    closed_at: float | None = None
    cancelled: bool = False

    async def stream(self, emit: Emit, /) -> None:
        try:
            i = 0
            while i < self.count:
                if self.delay:
                    await trio.sleep(self.delay)
                self.attempted += 1
                await emit(TextDelta(self.text))
                self.emitted += 1
                i += 1
            await emit(Done("stop"))
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.closed_at = trio.current_time()


@attrs.define(eq=False)
class RecordingSink:
    """A sink that records what it reads.

    ``delay`` sleeps after each event (a slow consumer: with ``MockClock`` it costs no wall
    time); ``stop_after`` raises :class:`ConsumerGone` after that many events (a reader that
    goes away). ``overlaps`` counts deliveries that started while another was in progress
    (must stay 0). ``keep_events=False`` keeps only counts and the text length, for long runs.
    """

    delay: float = 0.0
    stop_after: int | None = None
    keep_events: bool = True
    name: str = "recording"
    events: list[Event] = attrs.Factory(list)
    count: int = 0
    text_chars: int = 0
    overlaps: int = 0
    finished: bool = False
    _text: list[str] = attrs.Factory(list)
    _inside: bool = False

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._text)

    async def consume(self, events: EventReceiver, /) -> None:
        async for event in events:
            if self._inside:
                self.overlaps += 1
            self._inside = True
            try:
                self.count += 1
                if self.keep_events:
                    self.events.append(event)
                if isinstance(event, TextDelta):
                    self.text_chars += len(event.text)
                    if self.keep_events:
                        self._text.append(event.text)
                if self.stop_after is not None and self.count >= self.stop_after:
                    raise ConsumerGone(f"{self.name}: stopped reading after {self.count} events")
                if self.delay:
                    await trio.sleep(self.delay)
            finally:
                self._inside = False
        self.finished = True


async def check_sink(make_sink: Callable[[], Sink]) -> None:
    """Check that sinks built by ``make_sink`` honour the sink contract; raises AssertionError.

    1. It reads a normal stream to its end and returns.
    2. It reads a stream that ends with an ``Error`` event and returns.
    3. It handles a stream with no text at all.
    4. Cancelled while waiting for events, it lets ``trio.Cancelled`` out promptly (no task
       left behind).
    Run it in a test under ``trio`` (``MockClock`` is fine).
    """
    script: list[Step | Event] = [TextDelta("Hello "), TextDelta("world. "), Done("stop")]
    stats = await Pipeline(ScriptedProducer(script), sinks=[make_sink()]).run()
    assert stats.reason == "done", f"normal stream ended with {stats.reason}: {stats.error}"
    assert stats.sinks[0].state == "finished", f"sink state {stats.sinks[0].state}"

    script = [TextDelta("partial"), Error(kind="connection", message="reset", retryable=True)]
    stats = await Pipeline(ScriptedProducer(script), sinks=[make_sink()]).run()
    assert stats.reason == "error", f"error stream ended with {stats.reason}"
    assert stats.sinks[0].state == "finished", f"sink state {stats.sinks[0].state}"

    stats = await Pipeline(ScriptedProducer([Done("stop")]), sinks=[make_sink()]).run()
    assert stats.sinks[0].state == "finished", f"empty stream: sink state {stats.sinks[0].state}"

    slow = ScriptedProducer([TextDelta("a"), Step(TextDelta("b"), delay=3600.0), Done()])
    with trio.move_on_after(1.0) as scope:
        await Pipeline(slow, sinks=[Route(make_sink())]).run()
    assert scope.cancelled_caught, "the sink did not wait for events"
    assert slow.closed, "the producer was not closed on cancellation"
    await trio.testing.wait_all_tasks_blocked()

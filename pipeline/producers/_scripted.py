"""A producer that plays a script: for examples, demos and tests (deterministic under MockClock)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import trio

from .. import ConfigError, Done, Emit, Event, TextDelta

__all__ = ["ScriptedProducer", "Step"]


@attrs.frozen
class Step:
    """One step of a script: wait ``delay`` seconds, then emit ``event`` (or raise ``raise_``)."""

    event: Event | None = None
    delay: float = 0.0
    raise_: BaseException | None = None


def _tokens(text: str) -> list[str]:
    """Split text roughly as a tokenizer would: words with their leading space."""
    out: list[str] = []
    start = 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            out.append(text[start:i])
            start = i
    if text:
        out.append(text[start:])
    return out


@attrs.define(eq=False)
class ScriptedProducer:
    """Emit a fixed script of events, with optional delays (``trio.sleep``, so MockClock works).

    Build it from text with :meth:`from_text` (one text delta per word, then ``Done``), or from
    :class:`Step` items and events. ``closed`` becomes true when its task ends for any reason
    (normal end, error, cancellation) and ``emitted`` counts what it emitted: tests use them to
    prove cancellation reached the source.
    """

    steps: Sequence[Step | Event]
    emitted: int = 0
    closed: bool = False
    closed_at: float | None = None
    cancelled: bool = False

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        delay: float = 0.0,
        first_delay: float = 0.0,
        stop_reason: str | None = "stop",
    ) -> ScriptedProducer:
        """One delta per word (each after ``delay`` s; the first after ``first_delay`` s)."""
        if delay < 0 or first_delay < 0:
            raise ConfigError("delay and first_delay must be >= 0")
        steps: list[Step | Event] = []
        for i, tok in enumerate(_tokens(text)):
            steps.append(Step(TextDelta(tok), first_delay if i == 0 else delay))
        steps.append(Done(stop_reason))
        return cls(steps)

    @classmethod
    def from_deltas(cls, deltas: Iterable[str], *, delay: float = 0.0) -> ScriptedProducer:
        """One text delta per item of ``deltas``, then ``Done("stop")``."""
        steps: list[Step | Event] = [Step(TextDelta(d), delay) for d in deltas]
        steps.append(Done("stop"))
        return cls(steps)

    async def stream(self, emit: Emit, /) -> None:
        try:
            for step in self.steps:
                if isinstance(step, Step):
                    if step.delay:
                        await trio.sleep(step.delay)
                    if step.raise_ is not None:
                        raise step.raise_
                    if step.event is None:
                        continue
                    event = step.event
                else:
                    event = step
                await emit(event)
                self.emitted += 1
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.closed = True
            self.closed_at = trio.current_time()

"""Ready-made stages: transform, validate, accumulate (text stages live in :mod:`pipeline.text`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from ._errors import ConfigError
from ._events import Error, Event, TextDelta, Usage, is_terminal
from ._stage import Stage

__all__ = ["Accumulate", "AccumulatedTimings", "Transform", "Validate"]

DEFAULT_MAX_TEXT_CHARS: Final = 4_000_000


class Transform(Stage):
    """Map the text of every text delta with ``fn`` (a pure function, called once per delta).

    Deltas whose mapped text is empty are dropped; other events pass unchanged. ``fn`` sees
    deltas as they come, so a mapping that needs whole words or sentences belongs after an
    :class:`AdaptiveChunker` or a :class:`SentenceStage`.
    """

    name = "transform"

    def __init__(self, fn: Callable[[str], str]) -> None:
        self.fn = fn

    def feed(self, event: Event, now: float) -> Sequence[Event]:
        if isinstance(event, TextDelta):
            text = self.fn(event.text)
            return (TextDelta(text),) if text else ()
        return (event,)


class _TextBudget:
    """The accumulated text of a stream, bounded by ``max_chars``."""

    def __init__(self, max_chars: int) -> None:
        if max_chars < 1:
            raise ConfigError(f"max_chars must be >= 1, got {max_chars}")
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.chars = 0
        self._joined: str | None = ""

    def add(self, text: str) -> bool:
        """Append; False (and nothing appended) if it would exceed the budget."""
        if self.chars + len(text) > self.max_chars:
            return False
        self.parts.append(text)
        self.chars += len(text)
        self._joined = None
        return True

    @property
    def text(self) -> str:
        if self._joined is None:
            self._joined = "".join(self.parts)
            self.parts = [self._joined]
        return self._joined


def _budget_error(max_chars: int, chars: int) -> Error:
    return Error(
        kind="budget",
        message=f"output exceeded the text budget of {max_chars} characters",
        retryable=False,
        partial_chars=chars,
    )


class Validate(Stage):
    """Abort the stream with an :class:`Error` event when ``check`` fails on the text so far.

    ``check(text)`` returns ``None`` when the text is acceptable and a message otherwise; the
    stream then ends with ``Error(kind="validation", message=...)`` (the runner stops the
    producer). ``check`` is called after every text delta with the accumulated text, or only its
    last ``window`` characters when ``window`` is set (which bounds the cost of each call), and
    once more at the end of the stream with the whole text when ``final_check`` is given.
    The accumulated text is bounded by ``max_chars``; past it the stream ends with an error of
    kind ``"budget"``.
    """

    name = "validate"

    def __init__(
        self,
        check: Callable[[str], str | None],
        *,
        window: int | None = None,
        final_check: Callable[[str], str | None] | None = None,
        max_chars: int = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        if window is not None and window < 1:
            raise ConfigError(f"window must be >= 1 or None, got {window}")
        self.check = check
        self.window = window
        self.final_check = final_check
        self._text = _TextBudget(max_chars)
        self._tail = ""
        self._failed = False

    def _fail(self, message: str) -> Error:
        self._failed = True
        return Error(
            kind="validation",
            message=message,
            retryable=False,
            partial_chars=self._text.chars,
        )

    def feed(self, event: Event, now: float) -> Sequence[Event]:
        if self._failed:
            return ()
        if isinstance(event, TextDelta):
            if not self._text.add(event.text):
                self._failed = True
                return (_budget_error(self._text.max_chars, self._text.chars),)
            if self.window is not None:
                self._tail = (self._tail + event.text)[-self.window :]
                text = self._tail
            else:
                text = self._text.text
            problem = self.check(text)
            if problem is not None:
                return (self._fail(problem),)
        elif is_terminal(event) and self.final_check is not None and not isinstance(event, Error):
            problem = self.final_check(self._text.text)
            if problem is not None:
                return (self._fail(problem),)
        return (event,)


@attrs.frozen
class AccumulatedTimings:
    """When the text came, in ``trio.current_time()`` units (``None`` if it never did)."""

    first_text_at: float | None
    last_text_at: float | None
    ended_at: float | None
    text_deltas: int


class Accumulate(Stage):
    """Keep the full text, the usage and timings of the stream, passing every event on.

    Read :attr:`text`, :attr:`usage` and :meth:`timings` during or after the run. The text is
    bounded by ``max_chars``; past it the stream ends with an error of kind ``"budget"``. When
    a stream fails, the runner fills the error event's ``partial_text`` from the first
    ``Accumulate`` stage of the chain.
    """

    name = "accumulate"

    def __init__(self, *, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> None:
        self._text = _TextBudget(max_chars)
        self.usage: Usage | None = None
        self._first: float | None = None
        self._last: float | None = None
        self._ended: float | None = None
        self._deltas = 0
        self._failed = False

    @property
    def text(self) -> str:
        return self._text.text

    def timings(self) -> AccumulatedTimings:
        return AccumulatedTimings(self._first, self._last, self._ended, self._deltas)

    def feed(self, event: Event, now: float) -> Sequence[Event]:
        if self._failed:
            return ()
        if isinstance(event, TextDelta):
            if not self._text.add(event.text):
                self._failed = True
                self._ended = now
                return (_budget_error(self._text.max_chars, self._text.chars),)
            if self._first is None:
                self._first = now
            self._last = now
            self._deltas += 1
        elif isinstance(event, Usage):
            self.usage = event
        elif is_terminal(event):
            self._ended = now
        return (event,)

"""The sentence stage: :class:`SentenceBuffer` as a pipeline stage, with a stall deadline."""

from __future__ import annotations

import math

from .. import ConfigError, Event, TextDelta, TextStage
from ._sentences import SentenceBuffer

__all__ = ["SentenceStage"]


class SentenceStage(TextStage):
    """Release text a sentence at a time (for speech), using :class:`SentenceBuffer`.

    ``stall_timeout``: when no text arrived for that long and a sentence is pending, it is
    released as it is (a producer that stalls mid-sentence should not leave the listener in
    silence). ``first_fragment_min_chars`` enables the buffer's fast path for the first clause.
    Other keyword arguments go to :class:`SentenceBuffer`.
    """

    name = "sentences"

    def __init__(
        self,
        *,
        stall_timeout: float | None = 1.0,
        first_fragment_min_chars: int | None = None,
        max_chars: int = 2000,
    ) -> None:
        if stall_timeout is not None and stall_timeout <= 0:
            raise ConfigError(f"stall_timeout must be > 0 or None, got {stall_timeout}")
        self.stall_timeout = stall_timeout
        self.buffer = SentenceBuffer(
            first_fragment_min_chars=first_fragment_min_chars, max_chars=max_chars
        )
        self._pending = 0
        self._last_input = math.inf

    def feed_text(self, text: str, now: float) -> list[str]:
        out = self.buffer.feed(text)
        self._pending += len(text) - sum(map(len, out))
        self._last_input = now
        return out

    def flush_text(self, now: float) -> list[str]:
        self._pending = 0
        return self.buffer.flush()

    def deadline(self) -> float:
        if self.stall_timeout is None or self._pending == 0:
            return math.inf
        return self._last_input + self.stall_timeout

    def expire(self, now: float) -> list[Event]:
        return [TextDelta(t) for t in self.flush_text(now)]

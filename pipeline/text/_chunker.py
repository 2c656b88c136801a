"""Adaptive chunking: fewer, larger chunks when the consumer lags; small ones when it keeps up."""

from __future__ import annotations

import math
from typing import Final

from .. import ConfigError, StageContext, TextDelta, TextStage
from ._graphemes import can_break, last_safe_cut

__all__ = ["AdaptiveChunker"]

_WS: Final = frozenset(" \t\n\r\f\v\u00a0\u3000")


class AdaptiveChunker(TextStage):
    """Regroup text deltas into chunks that end on word boundaries.

    A chunk is released when the held text reaches the current *target size* and a word boundary
    (whitespace followed by the next word) is in it, when it reaches ``max_chars`` (cut at the
    last word boundary, or at a character boundary if there is none), and when ``interval``
    seconds passed since the oldest held character arrived (display smoothing; ``None`` turns
    it off). The target starts at ``min_chars``; each time a chunk is released it doubles if the
    downstream pressure (see :class:`pipeline.StageContext`) is at least ``grow_at`` and halves
    if it is below ``shrink_at``, staying within ``[min_chars, max_chars]``.

    Never splits a UTF-8 character (text is ``str``) or an extended grapheme cluster: the last
    character is held until the next one shows it cannot be extended, or the stream ends (any
    non-text event, including ``Done``, releases everything). Held text is bounded by
    ``max_chars`` plus the size of one incoming delta.

    Choosing sizes: for display smoothing ``min_chars=1`` with ``interval=0.05`` keeps latency
    low; for consumers that pay per message (network frames, speech requests) raise
    ``min_chars``.
    """

    name = "chunker"

    def __init__(
        self,
        *,
        min_chars: int = 16,
        max_chars: int = 4096,
        interval: float | None = 0.05,
        grow_at: float = 0.5,
        shrink_at: float = 0.25,
    ) -> None:
        if min_chars < 1:
            raise ConfigError(f"min_chars must be >= 1, got {min_chars}")
        if max_chars < min_chars:
            raise ConfigError(f"max_chars ({max_chars}) must be >= min_chars ({min_chars})")
        if interval is not None and interval <= 0:
            raise ConfigError(f"interval must be > 0 or None, got {interval}")
        if not 0.0 <= shrink_at <= grow_at <= 1.0:
            raise ConfigError("need 0 <= shrink_at <= grow_at <= 1")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.interval = interval
        self.grow_at = grow_at
        self.shrink_at = shrink_at
        self.target = min_chars
        self._held = ""
        self._checked = 0  # cut positions 1.._checked hold no word boundary
        self._since = math.inf
        self._context = StageContext()

    def bind(self, context: StageContext) -> None:
        self._context = context

    @property
    def held(self) -> str:
        """Text received but not yet released."""
        return self._held

    def _adapt(self) -> None:
        pressure = self._context.downstream_pressure()
        if pressure >= self.grow_at:
            self.target = min(self.max_chars, self.target * 2)
        elif pressure < self.shrink_at:
            self.target = max(self.min_chars, self.target // 2)

    def feed_text(self, text: str, now: float) -> list[str]:
        if not text:
            return []
        if self._since == math.inf:
            self._since = now
        held = self._held
        self._held = ""  # drop the reference so += can extend in place
        held += text
        out: list[str] = []
        while len(held) >= self.target:
            limit = min(len(held) - 1, self.max_chars)
            cut = 0
            # The last word boundary (whitespace, then the next word) within the limit; the
            # positions already checked by an earlier call are not scanned again.
            i = limit
            while i > self._checked:
                if held[i - 1] in _WS and held[i] not in _WS and can_break(held, i):
                    cut = i
                    break
                i -= 1
            if cut == 0:
                self._checked = max(self._checked, limit)
                if len(held) > self.max_chars:
                    cut = last_safe_cut(held, self.max_chars)
            if cut == 0:
                break
            out.append(held[:cut])
            held = held[cut:]
            self._checked = 0
            self._since = now if held else math.inf
            self._adapt()
        self._held = held
        return out

    def flush_text(self, now: float) -> list[str]:
        held, self._held = self._held, ""
        self._since = math.inf
        self._checked = 0
        return [held] if held else []

    def deadline(self) -> float:
        if self.interval is None or not self._held:
            return math.inf
        return self._since + self.interval

    def expire(self, now: float) -> list[TextDelta]:
        held = self._held
        cut = last_safe_cut(held, len(held) - 1)
        if cut == 0:
            # Only one cluster held: wait for more text or the end (no deadline until then).
            self._since = math.inf
            return []
        self._held = held[cut:]
        self._since = now
        self._checked = 0
        self._adapt()
        return [TextDelta(held[:cut])]

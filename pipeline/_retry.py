"""One backoff for every retry llmpipe makes (the producers' retries, the client's reconnects).

A pure calculation: the caller counts its retries, sleeps (``trio.sleep``, so tests drive it
with ``trio.testing.MockClock``) and reads the server's hint (:func:`pipeline.wire.
retry_after_seconds`, the SSE ``retry:`` field).
"""

from __future__ import annotations

import random
from typing import Final

import attrs

from ._errors import ConfigError

__all__ = ["Backoff"]

_RANDOM: Final = random.Random()


@attrs.frozen
class Backoff:
    """How long to wait before retry number ``retry`` (0 for the first one).

    The ceiling grows as ``initial * multiplier ** retry`` up to ``maximum`` seconds; with
    ``jitter`` (full jitter) the wait is uniform in ``[0, ceiling]``, else the ceiling itself.
    A server hint (a ``Retry-After`` header, the SSE ``retry:`` field) is a lower bound, itself
    capped at ``max_hint`` seconds so a confused server cannot park the caller for hours
    (``math.inf``: no cap).
    """

    initial: float = 0.25
    maximum: float = 8.0
    multiplier: float = 2.0
    jitter: bool = True
    max_hint: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum):
            raise ConfigError(f"backoff: need 0 <= initial <= maximum, got {self}")
        if self.multiplier < 1 or self.max_hint < 0:
            raise ConfigError(f"backoff: need multiplier >= 1 and max_hint >= 0, got {self}")

    def delay(
        self, retry: int, hint: float | None = None, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry ``retry`` (>= 0), at least ``hint`` (seconds).

        ``rng`` is the random source of the jitter (a seeded one makes it reproducible).
        """
        try:
            ceiling = min(self.maximum, self.initial * self.multiplier**retry)
        except OverflowError:  # a large retry number: the ceiling is long reached
            ceiling = self.maximum
        wait = (rng or _RANDOM).uniform(0.0, ceiling) if self.jitter else ceiling
        if hint is not None:
            wait = max(wait, min(hint, self.max_hint))
        return wait

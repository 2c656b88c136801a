"""Limits every job of a batch shares: concurrency, requests and tokens per minute, a total
token budget.

The runner talks to a :class:`Limiter` through two calls: ``permit = await
limiter.acquire(estimated_tokens)`` before each request (it waits until the request fits),
then ``await permit.release(used_tokens)`` once the request is over (the estimate is replaced by
the usage the provider reported). A provider's ``429`` with ``retry-after`` is
``await limiter.pause(seconds)``: no request of any job starts before it ends.
:class:`LocalLimiter` keeps the counts in this process on trio's clock; another implementation
(one shared through Redis by workers on several machines) only has to keep the same protocol.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Protocol

import attrs
import trio

from pipeline import ConfigError, LLMPipeError
from pipeline.producers import CostLimitError

__all__ = [
    "DEFAULT_WINDOW",
    "Budget",
    "BudgetExhausted",
    "Limiter",
    "LimiterStatistics",
    "LocalLimiter",
    "Permit",
    "TokenBudget",
    "budget_message",
]

DEFAULT_WINDOW: Final = 60.0
"""Seconds of the window the per-minute limits apply to (tests may scale it down)."""


@attrs.frozen
class LimiterStatistics:
    """A snapshot of a limiter: what counts in the current window, what is running, the limits.

    ``requests``/``tokens`` count the requests running and those that ended less than
    ``window`` seconds ago (the tokens of a running request are its estimate);
    ``paused_for`` is the time left of a provider-asked pause (0 when none); ``pauses`` how many
    pauses were asked for. ``None`` for a limit means none.
    """

    running: int
    requests: int
    tokens: int
    concurrency: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    window: float
    paused_for: float
    pauses: int


class Permit(Protocol):
    """The right to send one request, from :meth:`Limiter.acquire`."""

    async def release(self, used_tokens: int | None = None) -> None:
        """The request is over: free its concurrency slot and count ``used_tokens`` (what the
        provider reported; ``None`` keeps the estimate, for a request whose usage is unknown)
        in the window from now on. Idempotent; completes when cancelled."""
        ...


class Limiter(Protocol):
    """Admission for requests shared by every job (and, for a shared implementation, every
    worker). Safe to call from many tasks at once."""

    async def acquire(self, estimated_tokens: int) -> Permit:
        """Wait until a request of about ``estimated_tokens`` (prompt and output limit) fits
        every limit, then count it. Raises :class:`pipeline.producers.CostLimitError` at once
        for a request that can never fit. Cancelling the wait counts nothing."""
        ...

    async def pause(self, seconds: float) -> None:
        """No request starts for ``seconds`` from now (a provider's ``retry-after``); a shorter
        pause than one already running changes nothing."""
        ...

    def statistics(self) -> LimiterStatistics: ...


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1 or None, got {value}")


@attrs.define(eq=False)
class LocalLimiter:
    """A :class:`Limiter` for the tasks of one process, on trio's clock (so
    ``trio.testing.MockClock`` drives it in tests).

    A request counts against ``requests_per_minute`` and ``tokens_per_minute`` from the moment
    it is admitted until ``window`` seconds after it *ended*: the provider saw it somewhere in
    between, so whatever moment the provider counts it at, no window of ``window`` seconds on
    its side holds more than the limits (at the price of a request's duration per window;
    measured in the benchmark). Its tokens are the estimate while it runs, then what
    :meth:`Permit.release` reports; a usage above the estimate can overshoot the window it
    ends in, so estimate with the request's output limit.

    Waiting requests are admitted in arrival order (the first one waits for room; the others
    queue behind it), so a large request is not starved by small ones.
    """

    concurrency: int | None = 16
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window: float = DEFAULT_WINDOW
    _finished: deque[tuple[float, int]] = attrs.field(factory=deque, init=False)
    _finished_tokens: int = attrs.field(default=0, init=False)
    _running: int = attrs.field(default=0, init=False)
    _running_tokens: int = attrs.field(default=0, init=False)
    _paused_until: float = attrs.field(default=-math.inf, init=False)
    _pauses: int = attrs.field(default=0, init=False)
    _turn: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        _check_limit("concurrency", self.concurrency)
        _check_limit("requests_per_minute", self.requests_per_minute)
        _check_limit("tokens_per_minute", self.tokens_per_minute)
        if not self.window > 0:
            raise ConfigError(f"window must be > 0, got {self.window}")

    async def acquire(self, estimated_tokens: int) -> Permit:
        tpm = self.tokens_per_minute
        if tpm is not None and estimated_tokens > tpm:
            raise CostLimitError(
                f"the request needs about {estimated_tokens} tokens, over the limit of {tpm} "
                "tokens per minute; nothing was sent"
            )
        async with self._turn:
            while (wait := self._wait(trio.current_time(), estimated_tokens)) > 0:
                changed = self._changed
                with trio.move_on_after(wait):
                    await changed.wait()
            self._running += 1
            self._running_tokens += estimated_tokens
        return _LocalPermit(self, estimated_tokens)

    async def pause(self, seconds: float) -> None:
        until = trio.current_time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._pauses += 1

    def statistics(self) -> LimiterStatistics:
        self._expire(trio.current_time())
        return LimiterStatistics(
            running=self._running,
            requests=self._running + len(self._finished),
            tokens=self._running_tokens + self._finished_tokens,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            window=self.window,
            paused_for=max(0.0, self._paused_until - trio.current_time()),
            pauses=self._pauses,
        )

    # -- inside ------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        while self._finished and self._finished[0][0] + self.window <= now:
            _, tokens = self._finished.popleft()
            self._finished_tokens -= tokens

    def _wait(self, now: float, tokens: int) -> float:
        """Seconds until a request of ``tokens`` may fit (``math.inf``: when one running ends);
        0 if it fits now."""
        self._expire(now)
        wait = max(0.0, self._paused_until - now)
        if self.concurrency is not None and self._running >= self.concurrency:
            return math.inf
        rpm = self.requests_per_minute
        if rpm is not None and self._running + len(self._finished) + 1 > rpm:
            if len(self._finished) <= self._running + len(self._finished) - rpm:
                return math.inf
            oldest_needed = self._running + len(self._finished) + 1 - rpm  # ends that must expire
            wait = max(wait, self._finished[oldest_needed - 1][0] + self.window - now)
        tpm = self.tokens_per_minute
        if tpm is not None:
            excess = self._running_tokens + self._finished_tokens + tokens - tpm
            if excess > 0:
                freed = 0
                for end, used in self._finished:
                    freed += used
                    if freed >= excess:
                        wait = max(wait, end + self.window - now)
                        break
                else:
                    return math.inf
        return wait

    def _release(self, estimated: int, used: int | None) -> None:
        self._running -= 1
        self._running_tokens -= estimated
        counted = estimated if used is None else used
        self._finished.append((trio.current_time(), counted))
        self._finished_tokens += counted
        self._changed.set()
        self._changed = trio.Event()


@attrs.define(eq=False)
class _LocalPermit:
    _limiter: LocalLimiter
    _estimated: int
    _released: bool = False

    async def release(self, used_tokens: int | None = None) -> None:
        if not self._released:  # synchronous inside: nothing to cancel
            self._released = True
            self._limiter._release(self._estimated, used_tokens)


class BudgetExhausted(LLMPipeError):
    """A request's tokens can never fit in what is left of the batch's token budget (even if
    every request running used nothing); nothing was sent. The message says what is left."""

    kind = "budget"


class Budget(Protocol):
    """A total token budget for a batch (``--max-tokens-total``), checked before each request
    is sent. :class:`TokenBudget` counts in this process; :class:`RedisTokenBudget` is shared
    by every worker of a queue."""

    async def reserve(self, tokens: int) -> Permit:
        """Set ``tokens`` (a request's estimate) aside, waiting while requests running may
        still give some back; raise :class:`BudgetExhausted` if they can never fit. The
        permit's ``release(used_tokens)`` replaces the reservation by the reported usage
        (``None``: count the reservation)."""
        ...


def budget_message(tokens: int, spent: int, total: int, where: str = "") -> str:
    """The reason a job refused by a budget is recorded failed with."""
    return (
        f"max_tokens_total: the request needs about {tokens} tokens and "
        f"{max(0, total - spent)} of {total} are left{where}; nothing was sent"
    )


@attrs.define(eq=False)
class TokenBudget:
    """At most ``total`` tokens for a whole batch in this process, checked before each request
    is sent (a :class:`Budget`).

    :meth:`reserve` takes a request's estimate out of what is left (waiting while requests
    that are running may still give some back), its permit's ``release`` replaces the estimate
    by the reported usage. ``spent`` starts at what earlier runs of the same batch used.
    """

    total: int
    spent: int = 0
    _reserved: int = attrs.field(default=0, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        if self.total < 1:
            raise ConfigError(f"the token budget must be >= 1, got {self.total}")

    @property
    def reserved(self) -> int:
        """Tokens set aside for requests still running."""
        return self._reserved

    async def reserve(self, tokens: int) -> Permit:
        while self.spent + self._reserved + tokens > self.total:
            if self.spent + tokens > self.total:
                raise BudgetExhausted(budget_message(tokens, self.spent, self.total))
            await self._changed.wait()
        self._reserved += tokens
        return _BudgetPermit(self, tokens)

    def settle(self, reserved: int, used: int | None) -> None:
        """A request that reserved ``reserved`` ended having used ``used`` tokens (``None``:
        unknown, count the reservation)."""
        self._reserved -= reserved
        self.spent += reserved if used is None else used
        self._changed.set()
        self._changed = trio.Event()


@attrs.define(eq=False)
class _BudgetPermit:
    _budget: TokenBudget
    _reserved: int
    _released: bool = False

    async def release(self, used_tokens: int | None = None) -> None:
        if not self._released:  # synchronous inside: nothing to cancel
            self._released = True
            self._budget.settle(self._reserved, used_tokens)
